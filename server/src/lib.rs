//! A kadalu brick library.
