//! The kadalu FUSE client library.
