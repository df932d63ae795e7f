//! The file-sharing node (work in progress): the shared folder, downloads, the trusted
//! session and query memory.

pub mod auth;
pub mod seen;
pub mod shared;
pub mod store;
