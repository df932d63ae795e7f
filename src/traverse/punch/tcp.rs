//! TCP hole punching.

mod feasibility;

pub use feasibility::{
    tcp_feasibility, Inbound, Side, TcpMapping, TcpNatSummary, TcpRefusal, TcpWay,
};
