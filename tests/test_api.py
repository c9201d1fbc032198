"""eddy.api: the seed's manifests parse with the seed's values; bad inputs are refused by field path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from eddy.api import (
    API_VERSION,
    PLURALS,
    DataLoad,
    Dataset,
    JindoRuntime,
    LoadTarget,
    ValidationError,
    parse_dataload,
    parse_dataset,
    parse_object,
    parse_runtime,
)
from tests.support.seed import SEED

DATA = Path(__file__).resolve().parent / "data"
FILL = {
    "<oss_bucket>": "my-bucket",
    "<bucket_dir>": "serverless",
    "<oss_endpoint>": "oss-cn-hangzhou.aliyuncs.com",
}
Doc = dict[str, Any]


def seed_docs(name: str, *, filled: bool = True) -> list[Doc]:
    text = (SEED / name).read_text()
    if filled:
        for placeholder, value in FILL.items():
            text = text.replace(placeholder, value)
    return [d for d in yaml.safe_load_all(text) if d]


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_object(doc)
    return [str(e) for e in info.value.errors]


# ----------------------------------------------------------------------------------------- the seed
def test_seed_dataset_parses_with_the_seeds_values() -> None:
    ds = parse_dataset(seed_docs("dataset.yaml")[0])
    assert ds.meta.name == "serverless-data" and ds.meta.namespace == "default"
    assert ds.access_modes == ("ReadOnlyMany",)
    [mount] = ds.mounts
    assert (mount.name, mount.path, mount.read_only) == ("demo", "/", False)  # Fluid's default
    assert (mount.scheme, mount.bucket, mount.prefix) == ("oss", "my-bucket", "serverless/")
    assert mount.endpoint == "oss-cn-hangzhou.aliyuncs.com"
    assert dict(mount.options) == {"fs.oss.endpoint": "oss-cn-hangzhou.aliyuncs.com"}
    assert [(o.name, o.secret.name, o.secret.key) for o in mount.encrypt_options] == [
        ("fs.oss.accessKeyId", "access-key", "fs.oss.accessKeyId"),
        ("fs.oss.accessKeySecret", "access-key", "fs.oss.accessKeySecret"),
    ]
    assert ds.secret_names == ("access-key",)
    assert ds.ignored == ()


def test_seed_runtime_parses_with_the_seeds_values() -> None:
    rt = parse_runtime(seed_docs("dataset.yaml")[1])
    assert rt.meta.name == "serverless-data" and rt.replicas == 1
    [level] = rt.levels
    assert (level.mediumtype, level.path, level.volume_type) == ("MEM", "/dev/shm", "emptyDir")
    assert (level.quota, level.quota_text) == (5368709120, "5Gi")
    assert (level.high, level.low) == (0.95, 0.7)
    assert rt.capacity_per_worker == 5 * 2**30


def test_seed_dataload_parses_with_the_seeds_values() -> None:
    dl = parse_dataload(seed_docs("dataload.yaml")[0])
    assert (dl.meta.name, dl.dataset_name, dl.dataset_namespace) == (
        "serverless-data-warmup",
        "serverless-data",
        "default",
    )
    assert dl.load_metadata is True and dl.policy == "Once" and dl.schedule == ""
    assert dl.targets == (LoadTarget("/", 1),)


def test_unfilled_seed_says_which_placeholders_to_fill() -> None:
    messages = errors_of(seed_docs("dataset.yaml", filled=False)[0])
    assert any(
        m.startswith("spec.mounts[0].mountPoint: ") and "placeholder" in m and "<oss_bucket>" in m
        for m in messages
    ), messages
    assert any(
        m.startswith("spec.mounts[0].options[fs.oss.endpoint]: ") and "placeholder" in m for m in messages
    ), messages


def test_defaults_follow_fluid() -> None:
    ds = parse_dataset(
        {
            "apiVersion": API_VERSION,
            "kind": "Dataset",
            "metadata": {"name": "d"},
            "spec": {
                "mounts": [{"mountPoint": "s3://bucket/a/b", "name": "m1"}, {"mountPoint": "oss://other"}]
            },
        }
    )
    assert [m.path for m in ds.mounts] == ["/m1", "/other"]  # `/<mount name>`; unnamed: last segment
    assert [m.prefix for m in ds.mounts] == ["a/b/", ""]
    rt = parse_runtime(
        {
            "apiVersion": API_VERSION,
            "kind": "JindoRuntime",
            "metadata": {"name": "d"},
            "spec": {"tieredstore": {"levels": [{"mediumtype": "HDD", "path": "/x", "quota": "1k"}]}},
        }
    )
    assert rt.replicas == 1 and rt.levels[0].volume_type == "hostPath" and rt.levels[0].quota == 1000
    assert (rt.levels[0].high, rt.levels[0].low) == (0.95, 0.7)


def test_full_fixture_merges_shared_options_and_notes_ignored_fields() -> None:
    docs = [d for d in yaml.safe_load_all((DATA / "full.yaml").read_text()) if d]
    ds, rt, dl = (parse_object(d) for d in docs)
    assert isinstance(ds, Dataset) and isinstance(rt, JindoRuntime) and isinstance(dl, DataLoad)
    train, val = ds.mounts
    assert train.path == "/train" and train.endpoint == "http://127.0.0.1:9000" and train.prefix == "train/"
    assert dict(train.options) == {"fs.s3.endpoint": "http://127.0.0.1:9000", "region": "us-east-1"}
    assert dict(val.options)["region"] == "eu-west-1" and val.path == "/validation"
    assert {o.name: o.secret.name for o in train.encrypt_options} == {
        "fs.s3.accessKeyId": "s3-creds",
        "fs.s3.accessKeySecret": "s3-creds",
    }
    assert {o.name: o.secret.name for o in val.encrypt_options} == {
        "fs.s3.accessKeyId": "s3-creds",
        "fs.s3.accessKeySecret": "val-creds",
    }
    assert ds.secret_names == ("s3-creds", "val-creds")
    assert ds.ignored == ("spec.owner", "spec.mounts[1].shared")
    assert [lv.mediumtype for lv in rt.levels] == ["MEM", "SSD"]  # ordered fastest first
    assert rt.levels[1].quota == 100 * 10**9 and (rt.levels[1].high, rt.levels[1].low) == (0.9, 0.5)
    assert rt.capacity_per_worker == 2 * 2**30 + 100 * 10**9 and rt.replicas == 3
    assert set(rt.ignored) == {"spec.master", "spec.networkmode"}  # spec.fuse.args is honoured
    assert rt.fuse.args == ("-okernel_cache",)
    assert (dl.policy, dl.schedule, dl.dataset_namespace) == ("Cron", "0 2 * * *", "training")
    assert dl.targets == (LoadTarget("/train/n01440764", 2), LoadTarget("/validation", 1))
    assert dict(dl.options) == {"atomicCache": "true", "threads": "8"}
    assert dl.ignored == ("spec.tolerations",)


def test_status_fields_are_read_and_written_as_fluid_spells_them() -> None:
    doc = seed_docs("dataset.yaml")[0]
    doc["status"] = {
        "phase": "Bound",
        "ufsTotal": "1.16GiB",
        "cacheStates": {"cached": "1.16GiB", "cacheCapacity": "5.00GiB", "cachedPercentage": "100.0%"},
    }
    assert parse_dataset(doc).status.to_dict() == doc["status"]
    rt_doc = seed_docs("dataset.yaml")[1]
    rt_doc["status"] = {
        "masterPhase": "Ready",
        "workerPhase": "Ready",
        "fusePhase": "Ready",
        "workerNumberReady": 1,
    }
    assert parse_runtime(rt_doc).status.to_dict() == rt_doc["status"]
    dl_doc = seed_docs("dataload.yaml")[0]
    dl_doc["status"] = {"phase": "Complete", "duration": "45s"}
    assert parse_dataload(dl_doc).status.to_dict() == dl_doc["status"]
    fresh = parse_dataset(seed_docs("dataset.yaml")[0]).status.to_dict()
    assert fresh["cacheStates"] == {"cached": "0.00B", "cacheCapacity": "0.00B", "cachedPercentage": "0.0%"}
    assert PLURALS == {"Dataset": "datasets", "JindoRuntime": "jindoruntimes", "DataLoad": "dataloads"}


def test_watermarks_are_strings_as_in_fluids_schema() -> None:
    for high, low in [("1", "0.5"), ("1.0", "0.2"), ("0.8", "0.79")]:
        doc = seed_docs("dataset.yaml")[1]
        doc["spec"]["tieredstore"]["levels"][0].update(high=high, low=low)
        level = parse_runtime(doc).levels[0]
        assert (level.high, level.low) == (float(high), float(low))
    doc = seed_docs("dataset.yaml")[1]
    doc["spec"]["tieredstore"]["levels"][0].update(high=0.9)
    with pytest.raises(ValidationError, match=r"high: 0\.9 must be a string"):
        parse_runtime(doc)  # kubectl apply refuses it too


def test_fluid_fields_eddy_does_not_act_on_are_accepted_and_noted() -> None:
    doc = seed_docs("dataset.yaml")[0]
    extra = {
        "owner": {"uid": 1, "gid": 1, "user": "u", "group": "g"},
        "runtimes": [{"name": "x", "namespace": "default", "type": "jindo"}],
        "placement": "Exclusive",
        "dataRestoreLocation": {"path": "/backup", "nodeName": "n"},
    }
    doc["spec"].update(extra)
    doc["spec"]["mounts"][0]["mountPoint"] = "oss://bucket/dir"
    doc["spec"]["mounts"][0]["options"] = {"fs.oss.endpoint": "oss.example.com"}
    assert parse_dataset(doc).ignored == tuple(f"spec.{k}" for k in extra)
    rt = seed_docs("dataset.yaml")[1]
    rt["spec"].update(
        master={"replicas": 1},
        worker={"ports": {"rpc": 8101}},
        fuse={"cleanPolicy": "OnDemand"},
        properties={"a": "b"},
        secret="s",
        user="u",
        labels={"a": "b"},
        networkmode="HostNetwork",
    )
    assert parse_runtime(rt).ignored == (
        "spec.master", "spec.worker.ports", "spec.fuse.cleanPolicy", "spec.properties", "spec.secret",
        "spec.user", "spec.labels", "spec.networkmode",
    )


def test_a_field_fluid_does_not_declare_is_refused_with_a_hint() -> None:
    rt = seed_docs("dataset.yaml")[1]
    rt["spec"]["jvmOptions"] = ["-Xmx1g"]  # not a JindoRuntime field
    rt["spec"]["worker"] = {"resurces": {}}
    with pytest.raises(ValidationError) as err:
        parse_runtime(rt)
    assert [str(e) for e in err.value.errors] == [
        "spec.jvmOptions: unknown field",
        "spec.worker.resurces: unknown field (did you mean resources?)",
    ]


# ------------------------------------------------------------------------------------- bad inputs
def _ds() -> Doc:
    return seed_docs("dataset.yaml")[0]


def _rt() -> Doc:
    return seed_docs("dataset.yaml")[1]


def _dl() -> Doc:
    return seed_docs("dataload.yaml")[0]


def _lv(doc: Doc) -> Doc:
    level: Doc = doc["spec"]["tieredstore"]["levels"][0]
    return level


def _m0(doc: Doc) -> Doc:
    mount: Doc = doc["spec"]["mounts"][0]
    return mount


def _ref(doc: Doc) -> Doc:
    ref: Doc = _m0(doc)["encryptOptions"][0]["valueFrom"]["secretKeyRef"]
    return ref


LV = "spec.tieredstore.levels[0]"
# name: (document factory, edit, expected field path, a fragment of the message)
BAD: dict[str, tuple[Callable[[], Doc], Callable[[Doc], Any], str, str]] = {
    "quota 5Gx": (_rt, lambda d: _lv(d).update(quota="5Gx"), f"{LV}.quota", '"5Gx" is not a quantity'),
    "negative quota": (_rt, lambda d: _lv(d).update(quota="-5Gi"), f"{LV}.quota", "negative"),
    "negative int quota": (_rt, lambda d: _lv(d).update(quota=-1), f"{LV}.quota", "negative"),
    "zero quota": (_rt, lambda d: _lv(d).update(quota="0"), f"{LV}.quota", "greater than zero"),
    "missing quota": (_rt, lambda d: _lv(d).pop("quota"), f"{LV}.quota", "required"),
    "quota typo": (
        _rt,
        lambda d: _lv(d).update(quotaa=_lv(d).pop("quota")),
        f"{LV}.quotaa",
        "unknown field (did you mean quota?)",
    ),
    "low >= high": (_rt, lambda d: _lv(d).update(high="0.7", low="0.7"), f"{LV}.low", "below high"),
    "high > 1": (_rt, lambda d: _lv(d).update(high="1.5"), f"{LV}.high", '"1.5" must be greater than 0'),
    "low zero": (_rt, lambda d: _lv(d).update(low=0), f"{LV}.low", "greater than 0"),
    "watermark abc": (_rt, lambda d: _lv(d).update(low="abc"), f"{LV}.low", '"abc" is not a number'),
    "mediumtype NVME": (_rt, lambda d: _lv(d).update(mediumtype="NVME"), f"{LV}.mediumtype", '"NVME"'),
    "mediumtype missing": (_rt, lambda d: _lv(d).pop("mediumtype"), f"{LV}.mediumtype", "required"),
    "volumeType nfs": (_rt, lambda d: _lv(d).update(volumeType="nfs"), f"{LV}.volumeType", '"nfs"'),
    "level path relative": (_rt, lambda d: _lv(d).update(path="dev/shm"), f"{LV}.path", "absolute"),
    "two MEM levels": (
        _rt,
        lambda d: d["spec"]["tieredstore"]["levels"].append(dict(_lv(d))),
        "spec.tieredstore.levels[1].mediumtype",
        "twice",
    ),
    "replicas -1": (_rt, lambda d: d["spec"].update(replicas=-1), "spec.replicas", "at least 0"),
    "replicas two": (
        _rt,
        lambda d: d["spec"].update(replicas="two"),
        "spec.replicas",
        '"two" must be an integer',
    ),
    "runtime spec typo": (
        _rt,
        lambda d: d["spec"].update(tieredStore={}),
        "spec.tieredStore",
        "unknown field",
    ),
    "mountPoint hdfs": (
        _ds,
        lambda d: _m0(d).update(mountPoint="hdfs://nn/dir"),
        "spec.mounts[0].mountPoint",
        '"hdfs://nn/dir" must start with one of oss://, s3://',
    ),
    "no bucket": (
        _ds,
        lambda d: _m0(d).update(mountPoint="oss:///dir"),
        "spec.mounts[0].mountPoint",
        "bucket",
    ),
    "bad bucket": (
        _ds,
        lambda d: _m0(d).update(mountPoint="s3://my bucket/x"),
        "spec.mounts[0].mountPoint",
        "bucket name",
    ),
    "missing mountPoint": (_ds, lambda d: _m0(d).pop("mountPoint"), "spec.mounts[0].mountPoint", "required"),
    "missing mounts": (_ds, lambda d: d["spec"].pop("mounts"), "spec.mounts", "required"),
    "empty mounts": (_ds, lambda d: d["spec"].update(mounts=[]), "spec.mounts", "at least one"),
    "mount path relative": (_ds, lambda d: _m0(d).update(path="data"), "spec.mounts[0].path", "absolute"),
    "duplicate mount names": (
        _ds,
        lambda d: d["spec"]["mounts"].append({"mountPoint": "oss://b2/x", "name": "demo", "path": "/other"}),
        "spec.mounts[1].name",
        '"demo"',
    ),
    "root path with two mounts": (
        _ds,
        lambda d: d["spec"]["mounts"].append({"mountPoint": "oss://b2/x", "name": "two"}),
        "spec.mounts[0].path",
        '"/" is only allowed',
    ),
    "mount field typo": (
        _ds,
        lambda d: _m0(d).update(readonly=True),
        "spec.mounts[0].readonly",
        "did you mean readOnly?",
    ),
    "readOnly yes": (
        _ds,
        lambda d: _m0(d).update(readOnly="yes"),
        "spec.mounts[0].readOnly",
        "true or false",
    ),
    "accessModes unknown": (
        _ds,
        lambda d: d["spec"].update(accessModes=["ReadSometimes"]),
        "spec.accessModes[0]",
        '"ReadSometimes"',
    ),
    "secretKeyRef without key": (
        _ds,
        lambda d: _ref(d).pop("key"),
        "spec.mounts[0].encryptOptions[0].valueFrom.secretKeyRef.key",
        "required",
    ),
    "encryptOption without valueFrom": (
        _ds,
        lambda d: _m0(d)["encryptOptions"][0].pop("valueFrom"),
        "spec.mounts[0].encryptOptions[0].valueFrom",
        "required",
    ),
    "empty valueFrom": (
        _ds,
        lambda d: _m0(d)["encryptOptions"][0].update(valueFrom={}),
        "spec.mounts[0].encryptOptions[0].valueFrom.secretKeyRef",
        "required",
    ),
    "option both plain and secret": (
        _ds,
        lambda d: _m0(d)["options"].update({"fs.oss.accessKeyId": "x"}),
        "spec.mounts[0].options",
        "both as a plain and an encrypted option",
    ),
    "sharedEncryptOptions not a list": (
        _ds,
        lambda d: d["spec"].update(sharedEncryptOptions={"a": 1}),
        "spec.sharedEncryptOptions",
        "must be a list",
    ),
    "wrong apiVersion": (
        _ds,
        lambda d: d.update(apiVersion="data.fluid.io/v1"),
        "apiVersion",
        '"data.fluid.io/v1" must be data.fluid.io/v1alpha1',
    ),
    "unknown kind": (
        _ds,
        lambda d: d.update(kind="AlluxioRuntime"),
        "kind",
        '"AlluxioRuntime" is not one of',
    ),
    "missing metadata.name": (_ds, lambda d: d["metadata"].pop("name"), "metadata.name", "required"),
    "uppercase name": (_ds, lambda d: d["metadata"].update(name="Serverless"), "metadata.name", "lowercase"),
    "bad namespace": (
        _ds,
        lambda d: d["metadata"].update(namespace="a.b"),
        "metadata.namespace",
        "DNS label",
    ),
    "top-level typo": (_ds, lambda d: d.update(sepc={}), "sepc", "unknown field"),
    "missing spec": (_ds, lambda d: d.pop("spec"), "spec", "required"),
    "spec a list": (_ds, lambda d: d.update(spec=[]), "spec", "must be an object"),
    "dataload without dataset": (_dl, lambda d: d["spec"].pop("dataset"), "spec.dataset", "required"),
    "dataload dataset without name": (
        _dl,
        lambda d: d["spec"]["dataset"].pop("name"),
        "spec.dataset.name",
        "required",
    ),
    "target path relative": (
        _dl,
        lambda d: d["spec"].update(target=[{"path": "models"}]),
        "spec.target[0].path",
        '"models" must be an absolute path',
    ),
    "target replicas 0": (
        _dl,
        lambda d: d["spec"].update(target=[{"path": "/m", "replicas": 0}]),
        "spec.target[0].replicas",
        "at least 1",
    ),
    "target without path": (
        _dl,
        lambda d: d["spec"].update(target=[{"replicas": 1}]),
        "spec.target[0].path",
        "required",
    ),
    "policy Daily": (_dl, lambda d: d["spec"].update(policy="Daily"), "spec.policy", '"Daily" is not one of'),
    "cron bad schedule": (
        _dl,
        lambda d: d["spec"].update(policy="Cron", schedule="61 * * * *"),
        "spec.schedule",
        '"61 * * * *" is not a valid',
    ),
    "cron six fields": (
        _dl,
        lambda d: d["spec"].update(policy="Cron", schedule="0 0 * * * *"),
        "spec.schedule",
        "5-field",
    ),
    "cron without schedule": (_dl, lambda d: d["spec"].update(policy="Cron"), "spec.schedule", "required"),
    "options value a list": (
        _dl,
        lambda d: d["spec"].update(options={"threads": [1, 2]}),
        "spec.options.threads",
        "must be a string",
    ),
    "loadMetadata yes": (
        _dl,
        lambda d: d["spec"].update(loadMetadata="yes"),
        "spec.loadMetadata",
        "true or false",
    ),
    "dataload spec typo": (
        _dl,
        lambda d: d["spec"].update(targets=[]),
        "spec.targets",
        "did you mean target?",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_naming_the_field(case: str) -> None:
    make, edit, path, fragment = BAD[case]
    doc = copy.deepcopy(make())
    edit(doc)
    messages = errors_of(doc)
    hits = [m for m in messages if m.startswith(f"{path}: ")]
    assert hits, f"no error at {path}: {messages}"
    assert any(fragment in m for m in hits), messages


def test_enough_distinct_bad_inputs() -> None:
    assert len(BAD) >= 25 and len({path for _, _, path, _ in BAD.values()}) >= 25


def test_every_error_is_reported_at_once_with_kind_and_name() -> None:
    doc = _rt()
    _lv(doc).update(quota="5Gx", mediumtype="NVME", high="2")
    with pytest.raises(ValidationError) as info:
        parse_object(doc)
    paths = [e.path for e in info.value.errors]
    assert paths == [f"{LV}.mediumtype", f"{LV}.quota", f"{LV}.high"]
    assert (info.value.kind, info.value.name) == ("JindoRuntime", "serverless-data")
    assert '"5Gx" is not a quantity' in str(info.value)


def test_a_bad_watermark_does_not_cause_a_spurious_ordering_error() -> None:
    doc = _rt()
    _lv(doc).update(high="0.6", low="abc")
    assert [m.split(":")[0] for m in errors_of(doc)] == [f"{LV}.low"]


def test_not_an_object_and_garbage_status_are_handled() -> None:
    assert errors_of(["a list"]) == ["['a list'] is not an object"]
    doc = _ds()
    doc["status"] = ["garbage"]
    assert parse_dataset(doc).status.phase == ""
    rt = _rt()
    rt["status"] = {"workerNumberReady": "x", "masterPhase": "Ready"}
    assert parse_runtime(rt).status.worker_number_ready == 0


def test_docs_api_md_carries_the_table_of_every_fluid_field() -> None:
    from pathlib import Path

    from eddy.api_fields import HONOURED, field_table, fluid_fields

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert text.rstrip().endswith(field_table().rstrip()), "regenerate the table at the end of docs/api.md"
    for kind in HONOURED:
        paths = {path for path, _ in fluid_fields(kind)}
        assert set(HONOURED[kind]) <= paths, set(HONOURED[kind]) - paths  # no stale entries
        assert all(f"| `{path}` |" in text for path in paths)
