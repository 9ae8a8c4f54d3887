//! The commands other than the server: `send`, `check-config`, `rotate-key` and `bench` (the
//! load tool). The server never imports from here.

pub mod bench;
pub mod rotate_key;
pub mod send;
