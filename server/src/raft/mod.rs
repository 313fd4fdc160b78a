//! Replica3: the bricks of a replica set form one Raft group (openraft 0.9).
//! Every mutation is proposed as a log entry, committed by a majority, and
//! applied in log order on every member through the same apply path Replica1
//! uses; reads are answered by the leader after a read-index round.
//!
//! Every openraft type stays inside this module, so a later openraft upgrade
//! touches nothing else.
//!
//! - `snapshot`: a whole brick as one archive file.

pub mod snapshot;
