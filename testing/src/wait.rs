//! Waiting for something to happen instead of sleeping about as long as it
//! usually takes: [`wait_until`] probes until the probe says it is done.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

/// How often [`wait_until`] probes.
const EVERY: Duration = Duration::from_millis(50);

/// What a probe returns: done, with what it found, or not yet, with what
/// it saw instead if it can say. `false` and `None` are not yet, inside an
/// `Ok` too: `Ok(false)` and `Ok(None)` are not done.
pub trait Probe {
    /// What the wait returns once the probe is done.
    type Found;
    /// `Ok(found)` once done; else what was seen, if anything.
    fn done(self) -> Result<Self::Found, Option<String>>;
}

/// Done when true.
impl Probe for bool {
    type Found = ();
    fn done(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

/// Done: the `Ok(())` of a probe whose `Err` says what it saw.
impl Probe for () {
    type Found = ();
    fn done(self) -> Result<(), Option<String>> {
        Ok(())
    }
}

/// Done when `Some`.
impl<T> Probe for Option<T> {
    type Found = T;
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// As its `Ok` says; an `Err` is not yet, and what was seen.
impl<P: Probe, E: Display> Probe for Result<P, E> {
    type Found = P::Found;
    fn done(self) -> Result<P::Found, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:#}")))?.done()
    }
}

/// Calls `probe` every 50 ms until it is done (see [`Probe`]) and returns
/// what it found. Panics after `limit`, naming `what` and what the probe
/// saw last.
#[track_caller]
pub fn wait_until<P: Probe>(limit: Duration, what: &str, probe: impl FnMut() -> P) -> P::Found {
    match poll(EVERY, limit, what, probe) {
        Ok(found) => found,
        Err(error) => panic!("{error:#}"),
    }
}

/// [`wait_until`], probing every `every` and failing instead of panicking:
/// for the rigs, which return their errors, and for measurements, which
/// probe more often.
pub(crate) fn poll<P: Probe>(
    every: Duration,
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> P,
) -> anyhow::Result<P::Found> {
    let started = Instant::now();
    loop {
        let seen = match probe().done() {
            Ok(found) => return Ok(found),
            Err(seen) => seen,
        };
        if started.elapsed() >= limit {
            let seen = seen.map_or_else(String::new, |seen| format!("; last saw: {seen}"));
            anyhow::bail!("not {what} after {limit:?}{seen}");
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_the_probe_found_once_done() {
        let mut calls = 0;
        let found = wait_until(Duration::from_secs(5), "the third call", || {
            calls += 1;
            Ok::<_, String>((calls == 3).then_some(calls))
        });
        assert_eq!(found, 3);
    }

    #[test]
    #[should_panic(expected = "not ready after 100ms; last saw: 2 of 9")]
    fn names_what_it_waited_for_and_what_it_saw_last() {
        let mut seen = 0;
        wait_until(Duration::from_millis(100), "ready", || {
            seen = (seen + 1).min(2);
            Err::<(), _>(format!("{seen} of 9"))
        });
    }
}
