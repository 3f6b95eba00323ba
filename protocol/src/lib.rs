//! CTDB protocol.
