"""A package whose app lives in a submodule (`loading_pkg.api:holder.app`)."""
