//! The progress bar on stderr, drawn only when stderr is a terminal.
//!
//! Workers only bump an atomic counter; a ticker task copies it into the bar ten times a
//! second, so drawing costs the hot path nothing. When stderr is piped or redirected, no
//! bar exists at all: nothing is written, so logs and CI output stay clean.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::task::JoinHandle;

const REFRESH: Duration = Duration::from_millis(100);

/// Progress of one phase.
pub struct Progress {
    completed: Arc<AtomicU64>,
    display: Option<(ProgressBar, JoinHandle<()>)>,
}

impl Progress {
    /// A progress display for `label`; `planned` is the request count when known. With
    /// `draw` false (or stderr not a terminal) nothing is ever drawn.
    pub fn start(draw: bool, label: &str, planned: Option<u64>) -> Self {
        let completed = Arc::new(AtomicU64::new(0));
        if !draw {
            return Self {
                completed,
                display: None,
            };
        }
        let bar = match planned {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr())
                .with_style(bar_style(
                    "{prefix:>5} [{bar:30}] {pos}/{len} {rate} {elapsed_precise}",
                )),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                bar_style("{prefix:>5} {spinner} {pos} requests {rate} {elapsed_precise}"),
            ),
        };
        bar.set_prefix(label.to_string());
        let ticker = tokio::spawn({
            let bar = bar.clone();
            let completed = Arc::clone(&completed);
            async move {
                let mut interval = tokio::time::interval(REFRESH);
                loop {
                    interval.tick().await;
                    bar.set_position(completed.load(Ordering::Relaxed));
                }
            }
        });
        Self {
            completed,
            display: Some((bar, ticker)),
        }
    }

    /// The counter the workers bump once per finished request.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.completed)
    }

    /// Removes the bar, so the report starts on a clean line.
    pub fn finish(self) {
        if let Some((bar, ticker)) = self.display {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    // The templates are constants; if one were refused, a plain bar is still a bar.
    ProgressStyle::with_template(template)
        .map(|style| {
            style.progress_chars("=> ").with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} req/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}
