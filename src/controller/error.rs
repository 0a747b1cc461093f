//! Why a reconcile failed: the step, the source, what it means for the conditions.

use super::*;
use crate::api::conditions::reasons;

/// Why a reconcile failed (it is retried with backoff), with the step that failed (e.g.
/// "add the finalizer", "write the status", "create the policy").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {step} (Kubernetes API): {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("could not {step}: {source}")]
    Portkey {
        step: &'static str,
        #[source]
        source: PortkeyError,
    },
}

impl From<kube::Error> for Error {
    fn from(source: kube::Error) -> Self {
        Error::Kube {
            step: "call the Kubernetes API",
            source,
        }
    }
}

impl From<PortkeyError> for Error {
    fn from(source: PortkeyError) -> Self {
        Error::Portkey {
            step: "call the Portkey Admin API",
            source,
        }
    }
}

impl Error {
    pub fn kube(step: &'static str, source: kube::Error) -> Self {
        Error::Kube { step, source }
    }

    pub fn portkey(step: &'static str, source: PortkeyError) -> Self {
        Error::Portkey { step, source }
    }

    /// CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => reasons::KUBERNETES_API_ERROR,
            Error::Portkey { source, .. } => source.reason(),
        }
    }

    /// A 409 Conflict from the Kubernetes API: this pass worked from a copy of the resource the
    /// watch has already replaced. Not a failure: the newer version is reconciled at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source, .. } if kube_ops::is_conflict(source))
    }

    /// True when retrying cannot help (an Admin API validation error).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Error::Portkey { source, .. } if source.is_terminal())
    }

    /// True when only a human can fix it: an invalid request, a key that is refused or lacks
    /// a scope, an exhausted subscription. Still retried (the key may be fixed), but Stalled.
    pub fn needs_human(&self) -> bool {
        match self {
            Error::Portkey { source, .. } => {
                source.is_terminal()
                    || matches!(
                        source,
                        PortkeyError::Unauthorized { .. }
                            | PortkeyError::Forbidden { .. }
                            | PortkeyError::Http { status: 402, .. }
                    )
            }
            Error::Kube { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 401 || s.code == 403)
            }
        }
    }

    /// The condition message: stable between passes (no "retry after N s"), and naming the
    /// scope a refused key lacks.
    pub fn condition_message(&self) -> String {
        match self {
            Error::Portkey {
                step,
                source: PortkeyError::RateLimited { message, .. },
            } => {
                format!("could not {step}: Portkey Admin API rate limit hit (HTTP 429): {message}")
            }
            Error::Portkey {
                step,
                source: e @ PortkeyError::Forbidden { .. },
            } => format!(
                "could not {step}: {e}; the Admin API key needs the {} scope for this workspace (on Prisma AIRS AI Gateway: the service account's role must cover that operation in this tenant), or the object belongs to another workspace",
                e.missing_scope().unwrap_or("matching")
            ),
            Error::Portkey {
                step,
                source: e @ PortkeyError::Unauthorized { .. },
            } => format!(
                "could not {step}: {e}; check the Admin API key (missing, wrong, expired or rotated)"
            ),
            other => other.to_string(),
        }
    }

    /// What the failure means for the conditions.
    pub fn outcome(&self) -> conditions::Outcome {
        let reason = self.reason();
        let message = self.condition_message();
        if self.needs_human() {
            conditions::Outcome::Stalled { reason, message }
        } else {
            conditions::Outcome::Retrying { reason, message }
        }
    }

    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Portkey { source, .. } => source.retry_after(),
            Error::Kube { .. } => None,
        }
    }
}
