"""The portal: a web console at /portal for platform teams and developers, served by the same process."""
