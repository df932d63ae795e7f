//! The error type of the base layer: target parsing and name resolution.

use std::time::Duration;

/// Errors from parsing targets and resolving names.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not a valid target.
    #[error("invalid target {input:?}: {reason}")]
    InvalidTarget {
        /// The text that was given.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The resolver could not be set up.
    #[error("resolver setup failed: {0}")]
    ResolverSetup(String),
    /// The name could not be resolved.
    #[error("cannot resolve {host:?}: {reason}")]
    Resolve {
        /// The name that was looked up.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// The lookup took longer than allowed.
    #[error("resolving {host:?} timed out after {after:?}")]
    ResolveTimeout {
        /// The name that was looked up.
        host: String,
        /// The time limit.
        after: Duration,
    },
    /// The name resolved, but to no address of the wanted family.
    #[error("{host:?} has no {family} address")]
    NoAddress {
        /// The name that was looked up.
        host: String,
        /// The wanted family.
        family: crate::addr::Af,
    },
    /// The name resolved to no address of either family, or does not exist.
    #[error("{host:?} has no address")]
    NotFound {
        /// The name that was looked up.
        host: String,
    },
}
