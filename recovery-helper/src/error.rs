//! How a recovery step fails, naming the node (and database) at fault
//! wherever one is known.

use ctdb_client::ClientError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control failed, or its reply could not be used, on one node.
    #[error("control {op} failed on node {pnn}: {source}")]
    Node {
        op: &'static str,
        pnn: u32,
        #[source]
        source: ClientError,
    },
    /// A node answered, but not as it should have.
    #[error("node {pnn}: {msg}")]
    Bad { pnn: u32, msg: String },
    /// Records could not be kept between pull and push.
    #[error("record store: {0}")]
    Store(#[from] StoreError),
    /// Anything else (no node to blame).
    #[error("{0}")]
    Other(String),
    /// A failure whose node has had its ban credit already.
    #[error("{0}")]
    Credited(Box<Error>),
}

impl Error {
    /// The node the failure is attributed to, if any.
    pub fn node(&self) -> Option<u32> {
        match self {
            Error::Node { pnn, .. } | Error::Bad { pnn, .. } => Some(*pnn),
            Error::Credited(e) => e.node(),
            _ => None,
        }
    }

    /// A control failure on `pnn`.
    pub fn node_err(op: &'static str, pnn: u32) -> impl FnOnce(ClientError) -> Error {
        move |source| Error::Node { op, pnn, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
