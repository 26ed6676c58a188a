//! Exit codes: which failures the shell can tell apart.
//!
//! 0 ok, 1 an error, 2 a usage error (clap's), 3 a plan that does not fit in memory (`plan`,
//! `simulate`, and `search` when nothing fits), 4 a gate that failed (`check`, `twin
//! comm-check`, and `validate` / `twin check` given a threshold). A command returns one of the
//! two outcome errors below, with its message, or the planner's own out-of-memory error; `main`
//! finds either in the error's chain.

use std::fmt;

use pangu_strategies::PlanError;

/// A failure the exit code distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The plan (or every searched plan) needs more memory than a device has.
    DoesNotFit,
    /// A check, threshold or self-test the user asked for failed.
    GateFailed,
}

impl Outcome {
    /// The process exit code.
    pub(crate) fn code(self) -> i32 {
        match self {
            Outcome::DoesNotFit => 3,
            Outcome::GateFailed => 4,
        }
    }
}

/// An outcome with the message that explains it.
#[derive(Debug)]
pub(crate) struct Failed {
    pub outcome: Outcome,
    pub message: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// The error for "does not fit", with its explanation.
pub(crate) fn does_not_fit(message: impl Into<String>) -> anyhow::Error {
    Failed {
        outcome: Outcome::DoesNotFit,
        message: message.into(),
    }
    .into()
}

/// The error for a failed gate, with its explanation.
pub(crate) fn gate_failed(message: impl Into<String>) -> anyhow::Error {
    Failed {
        outcome: Outcome::GateFailed,
        message: message.into(),
    }
    .into()
}

/// The exit code of an error: its outcome's (a planner's out-of-memory refusal anywhere in the
/// chain is "does not fit"), else 1.
pub(crate) fn code_of(e: &anyhow::Error) -> i32 {
    let outcome = e.chain().find_map(|c| {
        if let Some(f) = c.downcast_ref::<Failed>() {
            return Some(f.outcome);
        }
        match c.downcast_ref::<PlanError>() {
            Some(PlanError::OutOfMemory { .. }) => Some(Outcome::DoesNotFit),
            _ => None,
        }
    });
    outcome.map_or(1, Outcome::code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn outcomes_survive_context_and_others_are_one() {
        let e = Err::<(), _>(does_not_fit("too big"))
            .context("planning")
            .unwrap_err();
        assert_eq!(code_of(&e), 3);
        assert_eq!(code_of(&gate_failed("2 of 3 checks failed")), 4);
        assert_eq!(code_of(&anyhow::anyhow!("unreadable")), 1);
        assert_eq!(format!("{:#}", e), "planning: too big");
    }
}
