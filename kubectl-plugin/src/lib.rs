//! The `kubectl kadalu` plugin: storage-add, storage-list and friends. Arrives with the kubectl plugin issue; nothing here yet.
