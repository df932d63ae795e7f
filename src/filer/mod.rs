//! The file-sharing node (work in progress): the shared folder and downloads.

pub mod shared;
pub mod store;
