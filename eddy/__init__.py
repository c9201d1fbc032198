"""eddy."""
