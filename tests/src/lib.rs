//! Shared harness for end-to-end tests: starts real `kadalu-server` processes and real `kadalu-mount` FUSE mounts, and tears them down in drop guards.
