//! A request's life cycle: every change of state the store makes, and what each one writes.
//!
//! This is the one place the rules live. The backends carry them out in SQL: where a write's
//! effect depends on its input (an attempt's outcome, a sync request's result) they bind what
//! [`Transition::effect`] says; where it is fixed, their statement spells it, and
//! `tests/api/lifecycle.rs` drives every transition through the [`Store`](super::Store) on
//! each backend and checks the row against this table.
//!
//! ```text
//!   POST /sync:   (new) ─SyncStarted→ processing ─SyncFinished→ completed | failed
//!                                      └─SyncAbandoned (its instance died)→ failed
//!   POST /async:  (new) ─Queued→ pending ─Claimed→ processing ─ResultStored→ callback_pending
//!                 callback_pending ─Attempted→ callback_success | callback_pending (retry)
//!                                              | callback_failed
//!                 processing | callback_pending (claimed) ─GivenUp→ callback_failed
//!                 callback_failed ─Redelivered→ callback_pending (a new round), or pending
//!                                 when it was given up before its work was done
//!                 pending | processing | callback_pending (not claimed) ─MadeDue→ itself, due
//!                                 now (an operator's retry now)
//!                 pending | processing | callback_pending ─Cancelled→ cancelled
//!                 cancelled (an attempt was in flight) ─AttemptLanded→ cancelled
//! ```
//!
//! A cancel ends the claim of a job whose work is under way (its result will not be stored),
//! and keeps the claim of a job whose delivery may be under way, so that the attempt, if it
//! lands, is recorded in the audit under it without changing the status.
//!
//! A claim whose lease runs out (its instance died or stalled) needs no write: the job is
//! claimable again, and its next claim counts one more claim without an outcome.

use std::time::Duration;

use crate::model::{Mode, Status, WorkResult};

/// The error a sync request is left with when its instance stopped before its work finished.
pub const ABANDONED_SYNC_ERROR: &str = "the service stopped before the work finished";

/// The statuses a request of `mode` passes through (the diagram above): only `processing`
/// is shared.
pub(crate) fn statuses_of(mode: Mode) -> &'static [Status] {
    match mode {
        Mode::Sync => &[Status::Processing, Status::Completed, Status::Failed],
        Mode::Async => &[
            Status::Pending,
            Status::Processing,
            Status::CallbackPending,
            Status::CallbackSuccess,
            Status::CallbackFailed,
            Status::Cancelled,
        ],
    }
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// Cancelled, by this call (`by_this_call`) or an earlier one. `in_flight`: a delivery
    /// attempt was under way then; it may still land (and is recorded in the audit).
    /// Otherwise no callback is sent after the cancel.
    Cancelled {
        in_flight: bool,
        by_this_call: bool,
    },
    NotFound,
    /// A sync request, or one already final, is not cancelled.
    Refused {
        mode: Mode,
        status: Status,
    },
}

impl Cancellation {
    /// Whether a request of `mode` in `status` is cancelled (`Ok`, with whether an attempt may
    /// be in flight: a claim holds it with its work done), or the answer without a write.
    pub(crate) fn decide(mode: Mode, status: Status, claimed: bool) -> Result<bool, Cancellation> {
        let in_flight = claimed && status == Status::CallbackPending;
        let transition = Transition::Cancelled { in_flight };
        if mode == Mode::Async && transition.applies_to(status) {
            Ok(in_flight)
        } else {
            Err(Cancellation::Refused { mode, status })
        }
    }

    /// This refusal, unless it refused a request already cancelled: a repeated cancel answers
    /// as the first did (`was_in_flight` is what it recorded).
    pub(crate) fn repeated(self, was_in_flight: bool) -> Self {
        match self {
            Cancellation::Refused {
                mode: Mode::Async,
                status: Status::Cancelled,
            } => Cancellation::Cancelled {
                in_flight: was_in_flight,
                by_this_call: false,
            },
            other => other,
        }
    }
}

/// What recording a delivery attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded, and the request moved on as the attempt's outcome says.
    MovedOn,
    /// Recorded in the audit, the request left as it is: it was cancelled while the attempt
    /// was in flight (`AttemptLanded`).
    Landed,
    /// The claim no longer held the job: nothing was recorded.
    ClaimLost,
}

impl Recorded {
    pub fn is_recorded(self) -> bool {
        self != Recorded::ClaimLost
    }
}

/// What making a request due now found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeDue {
    /// Due now (or it was already due).
    Due,
    /// A claim holds it: an attempt is under way; its outcome decides what comes next.
    UnderWay,
    NotFound,
    /// A sync request is never queued: its client is waiting for its work.
    Sync,
    /// Only a queued request waiting for its turn can be made due.
    WrongStatus(Status),
    /// It waits for an earlier request of its ordering key to end, whatever its due time.
    BehindEarlier,
}

impl MadeDue {
    /// Whether a request of `mode` in `status` (`claimed`: a claim holds it;
    /// `behind_earlier`: an earlier request of its ordering key is queued or under way) is
    /// made due (`Ok`), or the answer without a write.
    pub(crate) fn decide(
        mode: Mode,
        status: Status,
        claimed: bool,
        behind_earlier: bool,
    ) -> Result<(), MadeDue> {
        if mode == Mode::Sync {
            return Err(MadeDue::Sync);
        }
        match (Transition::MadeDue.applies_to(status), claimed) {
            (true, true) => Err(MadeDue::UnderWay),
            (true, false) if behind_earlier => Err(MadeDue::BehindEarlier),
            (true, false) => Ok(()),
            (false, _) => Err(MadeDue::WrongStatus(status)),
        }
    }
}

/// What happens to a job after a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Due again after this delay, counted on the database's clock (so that instances whose
    /// clocks disagree still agree on when a job is due).
    RetryAfter(Duration),
    /// Given up at once: the failure is one no retry can mend (a blocked destination).
    GaveUp,
    /// Given up after the last retry the policy allows.
    RetriesExhausted,
}

impl AttemptOutcome {
    /// The request's status once this outcome is recorded.
    pub fn status(self) -> Status {
        match self {
            AttemptOutcome::Delivered => Status::CallbackSuccess,
            AttemptOutcome::RetryAfter(_) => Status::CallbackPending,
            AttemptOutcome::GaveUp | AttemptOutcome::RetriesExhausted => Status::CallbackFailed,
        }
    }

    /// The request's `callback_last_error` once this outcome of an attempt that failed with
    /// `error` is recorded: the attempt's error, or, when it was the last retry, the
    /// original's `Max retries exceeded: <cause>` (clients of the original match on it).
    pub fn last_error(self, error: Option<&str>) -> Option<String> {
        match (self, error) {
            (AttemptOutcome::RetriesExhausted, Some(error)) => {
                Some(format!("Max retries exceeded: {error}"))
            }
            (_, error) => error.map(str::to_owned),
        }
    }

    /// Whether the request is finished once this outcome is recorded.
    pub fn is_final(self) -> bool {
        !matches!(self, AttemptOutcome::RetryAfter(_))
    }
}

/// How a sync request's outcome is stored: its final status, its result, and why it failed.
pub(crate) fn sync_outcome<'a>(
    outcome: Result<&'a WorkResult, &'a str>,
) -> (Status, Option<&'a WorkResult>, Option<&'a str>) {
    match outcome {
        Ok(result) => (Status::Completed, Some(result), None),
        Err(reason) => (Status::Failed, None, Some(reason)),
    }
}

/// A change of a request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A sync request is recorded while its work runs (only one still working after a
    /// moment, or one holding an idempotency key).
    SyncStarted,
    /// A sync request ends, with its result or why it failed.
    SyncFinished { succeeded: bool },
    /// A sync request is found `processing` after its instance died.
    SyncAbandoned,
    /// An async request is accepted: queued, due at once.
    Queued,
    /// A worker takes a due job under a lease of its own.
    Claimed,
    /// The claimed job's work is done; its input is no longer kept.
    ResultStored,
    /// A delivery attempt was made under the claim, with this outcome; the attempt is added
    /// to the audit and its number becomes the request's attempt count.
    Attempted(AttemptOutcome),
    /// A claimed job that cannot be worked ends without an attempt
    /// ([`MAX_UNRECORDED_CLAIMS`](super::MAX_UNRECORDED_CLAIMS)).
    GivenUp,
    /// An operator puts a failed delivery back in the queue for a new round of attempts.
    /// `work_done`: whether its work result is stored (a job given up before its work has
    /// none, and waits for the work again, as a new one does).
    Redelivered { work_done: bool },
    /// A claim is handed back untouched (at shutdown).
    Released,
    /// An operator makes a queued request due now (retry now): its backoff or schedule is
    /// cut short, its attempt count stays. A job under a claim is left to it (a `processing`
    /// job without one was handed back at a shutdown, or by a heartbeat).
    MadeDue,
    /// A client or operator ends an async request before its delivery did. `in_flight`: a
    /// claim holds it with its work done, so a delivery attempt may be under way.
    Cancelled { in_flight: bool },
    /// The attempt in flight when its request was cancelled is recorded (whatever its
    /// outcome, the request stays cancelled).
    AttemptLanded,
}

/// What a transition writes, beside the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// `completed_at`: the work finished (a sync request's end, an async request's result
    /// stored). Written once: a redelivery does not do the work again.
    pub completed: Change<()>,
    /// `delivered_at`: an async request's delivery ended (its last attempt, or given up).
    pub delivered: Change<()>,
    /// When the job is next due (`next_attempt_at`): a job is in the queue while it has one.
    pub due: Change<Due>,
    /// The claim (owner, expiry, token).
    pub lease: Change<()>,
    /// Claims of the job since an outcome was last recorded.
    pub unrecorded_claims: Tally,
    /// Why the request failed (`error`): a redelivered request has not failed (yet).
    pub error: Change<()>,
    /// Whether the request gives its idempotency key up (a failed sync request did nothing a
    /// replay could answer with, so the client's retry may do the work).
    pub frees_key: bool,
    /// Whether the retry budget starts again from the attempts made so far.
    pub new_round: bool,
    /// Whether the write names the claim it is made under, and is refused (writing nothing)
    /// once another claim has taken the job over.
    pub under_claim: bool,
}

/// What a transition does to one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<T> {
    /// Written (`()`: with the time or claim of the write itself).
    Set(T),
    /// Emptied.
    Cleared,
    Kept,
}

/// When a queued job is next due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now,
    After(Duration),
}

/// What a transition does to a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Increment,
    /// Down by one, never below zero.
    Decrement,
    Reset,
    Kept,
}

impl Transition {
    /// The status a request is left in, given the one it was in (`None`: it is new); `None`
    /// when the transition does not apply to a request in that status.
    pub fn status_after(self, before: Option<Status>) -> Option<Status> {
        use Status::*;
        match (self, before) {
            (Transition::SyncStarted | Transition::Queued, Some(_)) => None,
            (Transition::SyncStarted, None) => Some(Processing),
            (Transition::Queued, None) => Some(Pending),
            // The `processing` row is written only for a slow request, so a fast one is new.
            (Transition::SyncFinished { succeeded }, None | Some(Processing)) => {
                Some(if succeeded { Completed } else { Failed })
            }
            (Transition::SyncAbandoned, Some(Processing)) => Some(Failed),
            // A claim starts a pending job's work; a job past that (its work done, or its
            // claim lost with the work half done) keeps its status.
            (Transition::Claimed, Some(Pending)) => Some(Processing),
            (
                Transition::Claimed | Transition::Released,
                Some(s @ (Processing | CallbackPending)),
            ) => Some(s),
            (Transition::ResultStored, Some(Processing)) => Some(CallbackPending),
            (Transition::Attempted(outcome), Some(CallbackPending)) => Some(outcome.status()),
            (Transition::GivenUp, Some(Processing | CallbackPending)) => Some(CallbackFailed),
            (Transition::Redelivered { work_done }, Some(CallbackFailed)) => {
                Some(if work_done { CallbackPending } else { Pending })
            }
            (Transition::MadeDue, Some(s @ (Pending | Processing | CallbackPending))) => Some(s),
            (Transition::Cancelled { in_flight: false }, Some(Pending | Processing))
            | (Transition::Cancelled { .. }, Some(CallbackPending))
            | (Transition::AttemptLanded, Some(Cancelled)) => Some(Cancelled),
            _ => None,
        }
    }

    /// Whether the transition applies to a request in status `before`.
    pub fn applies_to(self, before: Status) -> bool {
        self.status_after(Some(before)).is_some()
    }

    /// Everything else it writes.
    pub fn effect(self) -> Effect {
        let keep = Effect {
            completed: Change::Kept,
            delivered: Change::Kept,
            due: Change::Kept,
            lease: Change::Kept,
            unrecorded_claims: Tally::Kept,
            error: Change::Kept,
            frees_key: false,
            new_round: false,
            under_claim: false,
        };
        match self {
            Transition::SyncStarted => keep,
            Transition::SyncFinished { succeeded } => Effect {
                completed: Change::Set(()),
                error: if succeeded {
                    Change::Cleared
                } else {
                    Change::Set(())
                },
                frees_key: !succeeded,
                ..keep
            },
            Transition::SyncAbandoned => Effect {
                completed: Change::Set(()),
                error: Change::Set(()),
                frees_key: true,
                ..keep
            },
            Transition::Queued => Effect {
                due: Change::Set(Due::Now),
                ..keep
            },
            Transition::Claimed => Effect {
                lease: Change::Set(()),
                unrecorded_claims: Tally::Increment,
                ..keep
            },
            Transition::ResultStored => Effect {
                completed: Change::Set(()),
                under_claim: true,
                ..keep
            },
            Transition::Attempted(outcome) => Effect {
                delivered: if outcome.is_final() {
                    Change::Set(())
                } else {
                    Change::Kept
                },
                due: match outcome {
                    AttemptOutcome::RetryAfter(delay) => Change::Set(Due::After(delay)),
                    AttemptOutcome::Delivered
                    | AttemptOutcome::GaveUp
                    | AttemptOutcome::RetriesExhausted => Change::Cleared,
                },
                lease: Change::Cleared,
                unrecorded_claims: Tally::Reset,
                under_claim: true,
                ..keep
            },
            Transition::GivenUp => Effect {
                delivered: Change::Set(()),
                due: Change::Cleared,
                lease: Change::Cleared,
                error: Change::Set(()),
                under_claim: true,
                ..keep
            },
            Transition::Redelivered { .. } => Effect {
                delivered: Change::Cleared,
                due: Change::Set(Due::Now),
                unrecorded_claims: Tally::Reset,
                error: Change::Cleared,
                new_round: true,
                ..keep
            },
            // Handed back untouched, the claim does not count as one without an outcome.
            Transition::Released => Effect {
                lease: Change::Cleared,
                unrecorded_claims: Tally::Decrement,
                ..keep
            },
            Transition::MadeDue => Effect {
                due: Change::Set(Due::Now),
                ..keep
            },
            Transition::Cancelled { in_flight } => Effect {
                delivered: Change::Set(()),
                due: Change::Cleared,
                lease: if in_flight {
                    Change::Kept
                } else {
                    Change::Cleared
                },
                ..keep
            },
            Transition::AttemptLanded => Effect {
                lease: Change::Cleared,
                unrecorded_claims: Tally::Reset,
                under_claim: true,
                ..keep
            },
        }
    }

    /// How the number of queued jobs changes (the queue bound counts them).
    pub fn queue_delta(self) -> i64 {
        let queued_before = matches!(
            self,
            Transition::Claimed
                | Transition::ResultStored
                | Transition::Attempted(_)
                | Transition::GivenUp
                | Transition::Released
                | Transition::MadeDue
                | Transition::Cancelled { .. }
        );
        let queued_after = match self.effect().due {
            Change::Set(_) => true,
            Change::Cleared => false,
            Change::Kept => queued_before,
        };
        i64::from(queued_after) - i64::from(queued_before)
    }

    /// `due`'s delay from the write, in seconds, or `None` when the write takes the job out
    /// of the queue (or leaves its due time): what a backend binds for `next_attempt_at`.
    pub fn due_in_secs(self) -> Option<f64> {
        match self.effect().due {
            Change::Set(Due::Now) => Some(0.0),
            Change::Set(Due::After(delay)) => Some(delay.as_secs_f64()),
            Change::Cleared | Change::Kept => None,
        }
    }

    /// Whether the write ends the request's delivery (`delivered_at` becomes the time of the
    /// write).
    pub fn ends_delivery(self) -> bool {
        self.effect().delivered == Change::Set(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    const RETRY: AttemptOutcome = AttemptOutcome::RetryAfter(Duration::from_millis(1500));

    /// Every transition, with each status it applies to and the status it leaves: the whole
    /// life cycle, which every other status is refused by.
    #[test]
    fn each_transition_applies_only_where_the_life_cycle_allows() {
        /// The statuses a transition applies to (`None`: a new request), and what each becomes.
        type Moves = &'static [(Option<Status>, Status)];
        let table: &[(Transition, Moves)] = &[
            (Transition::SyncStarted, &[(None, Processing)]),
            (
                Transition::SyncFinished { succeeded: true },
                &[(None, Completed), (Some(Processing), Completed)],
            ),
            (
                Transition::SyncFinished { succeeded: false },
                &[(None, Failed), (Some(Processing), Failed)],
            ),
            (Transition::SyncAbandoned, &[(Some(Processing), Failed)]),
            (Transition::Queued, &[(None, Pending)]),
            (
                Transition::Claimed,
                &[
                    (Some(Pending), Processing),
                    (Some(Processing), Processing),
                    (Some(CallbackPending), CallbackPending),
                ],
            ),
            (
                Transition::ResultStored,
                &[(Some(Processing), CallbackPending)],
            ),
            (
                Transition::Attempted(AttemptOutcome::Delivered),
                &[(Some(CallbackPending), CallbackSuccess)],
            ),
            (
                Transition::Attempted(RETRY),
                &[(Some(CallbackPending), CallbackPending)],
            ),
            (
                Transition::Attempted(AttemptOutcome::GaveUp),
                &[(Some(CallbackPending), CallbackFailed)],
            ),
            (
                Transition::Attempted(AttemptOutcome::RetriesExhausted),
                &[(Some(CallbackPending), CallbackFailed)],
            ),
            (
                Transition::GivenUp,
                &[
                    (Some(Processing), CallbackFailed),
                    (Some(CallbackPending), CallbackFailed),
                ],
            ),
            (
                Transition::Redelivered { work_done: true },
                &[(Some(CallbackFailed), CallbackPending)],
            ),
            (
                Transition::Redelivered { work_done: false },
                &[(Some(CallbackFailed), Pending)],
            ),
            (
                Transition::Released,
                &[
                    (Some(Processing), Processing),
                    (Some(CallbackPending), CallbackPending),
                ],
            ),
            (
                Transition::Cancelled { in_flight: false },
                &[
                    (Some(Pending), Cancelled),
                    (Some(Processing), Cancelled),
                    (Some(CallbackPending), Cancelled),
                ],
            ),
            (
                Transition::Cancelled { in_flight: true },
                &[(Some(CallbackPending), Cancelled)],
            ),
            (Transition::AttemptLanded, &[(Some(Cancelled), Cancelled)]),
            (
                Transition::MadeDue,
                &[
                    (Some(Pending), Pending),
                    (Some(Processing), Processing),
                    (Some(CallbackPending), CallbackPending),
                ],
            ),
        ];
        let befores = std::iter::once(None).chain(Status::ALL.map(Some));
        for (transition, allowed) in table {
            for before in befores.clone() {
                let expected = allowed
                    .iter()
                    .find(|(from, _)| *from == before)
                    .map(|(_, to)| *to);
                assert_eq!(
                    transition.status_after(before),
                    expected,
                    "{transition:?} from {before:?}"
                );
            }
        }
    }

    #[test]
    fn a_finished_request_changes_only_by_redelivery_of_a_failed_callback() {
        let all = [
            Transition::SyncStarted,
            Transition::SyncFinished { succeeded: true },
            Transition::SyncFinished { succeeded: false },
            Transition::SyncAbandoned,
            Transition::Queued,
            Transition::Claimed,
            Transition::ResultStored,
            Transition::Attempted(AttemptOutcome::Delivered),
            Transition::Attempted(RETRY),
            Transition::Attempted(AttemptOutcome::GaveUp),
            Transition::GivenUp,
            Transition::Redelivered { work_done: true },
            Transition::Redelivered { work_done: false },
            Transition::Released,
            Transition::Cancelled { in_flight: false },
            Transition::Cancelled { in_flight: true },
            Transition::AttemptLanded,
            Transition::MadeDue,
        ];
        for finished in Status::ALL.into_iter().filter(|s| s.is_finished()) {
            let moves: Vec<_> = all.iter().filter(|t| t.applies_to(finished)).collect();
            let expected: &[&Transition] = match finished {
                CallbackFailed => &[
                    &Transition::Redelivered { work_done: true },
                    &Transition::Redelivered { work_done: false },
                ],
                // Only the record of an attempt that was already in flight.
                Cancelled => &[&Transition::AttemptLanded],
                _ => &[],
            };
            assert_eq!(moves, expected, "from {finished:?}");
        }
    }

    #[test]
    fn an_attempts_outcome_decides_status_finish_and_due_time() {
        let delivered = Transition::Attempted(AttemptOutcome::Delivered);
        assert!(delivered.ends_delivery());
        assert_eq!(delivered.due_in_secs(), None);
        assert_eq!(delivered.effect().due, Change::Cleared);

        let retry = Transition::Attempted(RETRY);
        assert!(!retry.ends_delivery());
        assert_eq!(retry.due_in_secs(), Some(1.5));

        let gave_up = Transition::Attempted(AttemptOutcome::GaveUp);
        assert!(gave_up.ends_delivery());
        assert_eq!(gave_up.effect().due, Change::Cleared);
        let exhausted = Transition::Attempted(AttemptOutcome::RetriesExhausted);
        assert!(exhausted.ends_delivery());
        assert_eq!(exhausted.effect().due, Change::Cleared);
        assert_eq!(
            AttemptOutcome::RetriesExhausted
                .last_error(Some("HTTP 500"))
                .as_deref(),
            Some("Max retries exceeded: HTTP 500")
        );
        assert_eq!(
            AttemptOutcome::GaveUp
                .last_error(Some("blocked"))
                .as_deref(),
            Some("blocked")
        );

        for outcome in [
            AttemptOutcome::Delivered,
            RETRY,
            AttemptOutcome::GaveUp,
            AttemptOutcome::RetriesExhausted,
        ] {
            let effect = Transition::Attempted(outcome).effect();
            assert_eq!(effect.lease, Change::Cleared, "{outcome:?} ends the claim");
            assert_eq!(effect.unrecorded_claims, Tally::Reset, "{outcome:?}");
            assert!(
                effect.under_claim,
                "{outcome:?} is refused without the claim"
            );
        }
    }

    #[test]
    fn only_writes_of_a_claimed_job_need_the_claim() {
        for transition in [
            Transition::ResultStored,
            Transition::Attempted(AttemptOutcome::Delivered),
            Transition::GivenUp,
        ] {
            assert!(transition.effect().under_claim, "{transition:?}");
        }
        for transition in [
            Transition::Queued,
            Transition::Claimed,
            Transition::Redelivered { work_done: true },
            Transition::Released,
            Transition::SyncStarted,
        ] {
            assert!(!transition.effect().under_claim, "{transition:?}");
        }
    }

    #[test]
    fn claims_without_an_outcome_are_counted_up_and_reset() {
        assert_eq!(
            Transition::Claimed.effect().unrecorded_claims,
            Tally::Increment
        );
        assert_eq!(
            Transition::Released.effect().unrecorded_claims,
            Tally::Decrement,
            "a claim handed back untouched does not count"
        );
        assert_eq!(
            Transition::Redelivered { work_done: true }
                .effect()
                .unrecorded_claims,
            Tally::Reset
        );
        assert_eq!(Transition::Claimed.effect().lease, Change::Set(()));
        assert_eq!(Transition::Released.effect().lease, Change::Cleared);
    }

    #[test]
    fn a_sync_outcome_is_stored_as_its_transition_says() {
        let result = WorkResult {
            request_id: "r".into(),
            input_hash: "i".into(),
            output_hash: "o".into(),
            processing_time_ms: 1.0,
            iterations: 1,
        };
        for (outcome, succeeded) in [(Ok(&result), true), (Err("boom"), false)] {
            let (status, stored, error) = sync_outcome(outcome);
            let transition = Transition::SyncFinished { succeeded };
            assert_eq!(Some(status), transition.status_after(None));
            assert_eq!(Some(status), transition.status_after(Some(Processing)));
            assert_eq!(stored.is_some(), succeeded);
            assert_eq!(error.is_some(), !succeeded);
        }
    }

    #[test]
    fn only_a_failed_sync_request_frees_its_key() {
        assert!(
            Transition::SyncFinished { succeeded: false }
                .effect()
                .frees_key
        );
        assert!(Transition::SyncAbandoned.effect().frees_key);
        assert!(
            !Transition::SyncFinished { succeeded: true }
                .effect()
                .frees_key
        );
        assert!(!Transition::Queued.effect().frees_key);
    }

    #[test]
    fn redelivery_starts_a_new_round_due_at_once() {
        let effect = Transition::Redelivered { work_done: true }.effect();
        assert!(effect.new_round);
        assert_eq!(effect.delivered, Change::Cleared);
        assert_eq!(
            effect.completed,
            Change::Kept,
            "the work is not done again, so when it finished stands"
        );
        assert_eq!(
            effect.error,
            Change::Cleared,
            "a request given up and redelivered has not failed"
        );
        assert_eq!(
            Transition::Redelivered { work_done: false }.due_in_secs(),
            Some(0.0)
        );
    }

    #[test]
    fn retry_now_takes_a_queued_async_request_no_claim_holds() {
        let decide = |status, claimed| MadeDue::decide(Mode::Async, status, claimed, false);
        assert_eq!(decide(CallbackPending, false), Ok(()));
        assert_eq!(decide(Pending, false), Ok(()), "a schedule cut short");
        assert_eq!(
            decide(Processing, false),
            Ok(()),
            "handed back at a shutdown"
        );
        assert_eq!(decide(Processing, true), Err(MadeDue::UnderWay));
        assert_eq!(decide(CallbackPending, true), Err(MadeDue::UnderWay));
        for finished in Status::ALL.into_iter().filter(|s| s.is_finished()) {
            assert_eq!(decide(finished, false), Err(MadeDue::WrongStatus(finished)));
        }
        assert_eq!(
            MadeDue::decide(Mode::Async, Pending, false, true),
            Err(MadeDue::BehindEarlier),
            "its key's order comes first"
        );
        for status in Status::ALL {
            assert_eq!(
                MadeDue::decide(Mode::Sync, status, false, false),
                Err(MadeDue::Sync),
                "a sync request in {status:?} is never queued"
            );
        }
    }

    #[test]
    fn a_cancel_announces_an_attempt_only_where_one_can_be_under_way() {
        use Mode::*;
        let cancelled = |in_flight| Ok(in_flight);
        assert_eq!(
            Cancellation::decide(Async, Pending, false),
            cancelled(false)
        );
        assert_eq!(
            Cancellation::decide(Async, Processing, true),
            cancelled(false),
            "its result will not be stored, so nothing is delivered"
        );
        assert_eq!(
            Cancellation::decide(Async, CallbackPending, false),
            cancelled(false)
        );
        assert_eq!(
            Cancellation::decide(Async, CallbackPending, true),
            cancelled(true)
        );
        let refused = |mode, status| Err(Cancellation::Refused { mode, status });
        assert_eq!(
            Cancellation::decide(Sync, Processing, false),
            refused(Sync, Processing)
        );
        assert_eq!(
            Cancellation::decide(Async, CallbackSuccess, false),
            refused(Async, CallbackSuccess)
        );
        let again = Cancellation::decide(Async, Cancelled, false).unwrap_err();
        assert_eq!(
            again.repeated(true),
            Cancellation::Cancelled {
                in_flight: true,
                by_this_call: false
            },
            "a repeat answers as the first did"
        );
    }

    #[test]
    fn the_queue_counts_a_job_from_acceptance_to_its_last_attempt() {
        assert_eq!(Transition::Queued.queue_delta(), 1);
        assert_eq!(Transition::Redelivered { work_done: true }.queue_delta(), 1);
        assert_eq!(Transition::Claimed.queue_delta(), 0);
        assert_eq!(Transition::ResultStored.queue_delta(), 0);
        assert_eq!(Transition::Released.queue_delta(), 0);
        assert_eq!(Transition::Attempted(RETRY).queue_delta(), 0);
        assert_eq!(
            Transition::Attempted(AttemptOutcome::Delivered).queue_delta(),
            -1
        );
        assert_eq!(
            Transition::Attempted(AttemptOutcome::GaveUp).queue_delta(),
            -1
        );
        assert_eq!(Transition::GivenUp.queue_delta(), -1);
        assert_eq!(Transition::MadeDue.queue_delta(), 0);
        assert_eq!(Transition::Cancelled { in_flight: true }.queue_delta(), -1);
        assert_eq!(Transition::Cancelled { in_flight: false }.queue_delta(), -1);
        assert_eq!(
            Transition::AttemptLanded.queue_delta(),
            0,
            "out of the queue since its cancel"
        );
        assert_eq!(Transition::SyncStarted.queue_delta(), 0);
        assert_eq!(
            Transition::SyncFinished { succeeded: true }.queue_delta(),
            0
        );
    }
}
