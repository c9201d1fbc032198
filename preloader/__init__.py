"""preloader."""
