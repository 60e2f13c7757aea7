//! Checking a model exhaustively and summing up what was found, for the
//! tests and the `lb-models` binary.

use std::{
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// What a check explored and which properties failed.
#[derive(Debug)]
pub struct Summary {
    /// States generated, with repeats.
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The longest path explored.
    pub max_depth: usize,
    /// How long it took.
    pub elapsed: Duration,
    /// Each failed property with its trace (the actions from the first
    /// state, and the state they end in): a counterexample for `always`,
    /// nothing for a `sometimes` never seen.
    pub failed: Vec<(&'static str, String)>,
}

impl Summary {
    /// Whether property `name` failed.
    pub fn failed(&self, name: &str) -> bool {
        self.failed.iter().any(|(failed, _)| *failed == name)
    }
}

/// Explores every state of `model` breadth first, on every core.
pub fn check<M>(model: M) -> Summary
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Eq + Hash + Send + Sync,
    M::Action: Clone + Debug + PartialEq,
{
    let started = Instant::now();
    let checker = model.checker().threads(threads()).spawn_bfs().join();
    let elapsed = started.elapsed();
    let failed = (checker.model().properties().iter())
        .filter_map(|property| {
            let found = checker.discovery(property.name);
            let trace = found.map(|path| {
                let last = format!("{:#?}", path.last_state());
                format!("actions: {:?}\nends in: {last}", path.into_actions())
            });
            match property.expectation {
                Expectation::Sometimes if trace.is_none() => Some((property.name, String::new())),
                Expectation::Sometimes => None,
                _ => trace.map(|trace| (property.name, trace)),
            }
        })
        .collect();
    Summary {
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        failed,
    }
}

/// Whether the checker finds a counterexample to property `name`,
/// stopping at the first one.
pub fn finds<M>(model: M, name: &'static str) -> bool
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Eq + Hash + Send + Sync,
    M::Action: Clone + Debug + PartialEq,
{
    let checker = (model.checker().threads(threads()))
        .finish_when(HasDiscoveries::AnyOf([name].into()))
        .spawn_bfs()
        .join();
    checker.discovery(name).is_some()
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
