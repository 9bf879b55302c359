//! A function's name in its namespace: the one key the desired state, the placer and the
//! board's reconciler share.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A function: `namespace` and `name`. Shown as `name.namespace`, the way faas-cli and the
/// local provider name a function. Names from a user are checked by
/// [`FunctionKey::new`](crate::desired::FunctionKey::new) before they become a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunctionKey {
    /// The namespace.
    pub namespace: String,
    /// The function's name.
    pub name: String,
}

impl FunctionKey {
    /// The key of names already checked (read back from the cluster's state, or in tests).
    pub fn of(namespace: &str, name: &str) -> FunctionKey {
        FunctionKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}
