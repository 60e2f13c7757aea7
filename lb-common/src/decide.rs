//! The data plane's decision, written once: for a packet's flow, its
//! entry in the flow table, then the client's pin, its sticky session, and
//! the VIP's scheduler (Maglev, or least-load between two Maglev picks).
//! [`decide`] reads the maps through [`DecisionMaps`]: the XDP program's
//! maps in the data plane, a snapshot of the pinned maps in `lb explain`,
//! so the explanation takes the data plane's steps in the data plane's
//! order. The procedure writes nothing: the data plane touches the flow,
//! refreshes or records the session and records a new flow from what it
//! returns; an explanation only reads.

use core::ops::Deref;

use crate::balancer::{
    mask_prefix, Backend, FlowKey, FlowValue, StickyKey, StickyValue, VipInfo, VipKey, VipTag,
    LOAD_UNKNOWN, NO_BACKEND, SCHED_LEAST_LOAD, SECOND_CHOICE_SALT, VIP_HAS_PINS, VIP_STICKY,
};

const NS_PER_S: u64 = 1_000_000_000;

/// Whether a flow last seen at `last_seen_ns` has been idle past its VIP's
/// idle timeout at `now_ns` (the coarse monotonic clock, which may lag
/// another CPU's reading: a flow seen "later" than now is not idle).
#[inline(always)]
pub fn flow_expired(now_ns: u64, last_seen_ns: u64, idle_timeout_s: u32) -> bool {
    now_ns.saturating_sub(last_seen_ns) > u64::from(idle_timeout_s) * NS_PER_S
}

/// Whether a sticky session last used at `last_ns` is still fresh at
/// `now_ns` (CLOCK_MONOTONIC) for a VIP with a TTL of `ttl_s` seconds.
#[inline(always)]
pub fn session_fresh(now_ns: u64, last_ns: u64, ttl_s: u32) -> bool {
    now_ns.wrapping_sub(last_ns) < u64::from(ttl_s) * NS_PER_S
}

/// The flow hash of the scheduler's first choice (Maglev's only one).
#[inline(always)]
pub fn first_hash(key: &FlowKey, seed: u32) -> u32 {
    key.hash(seed)
}

/// The flow hash of the least-load scheduler's second choice: independent
/// of the first.
#[inline(always)]
pub fn second_hash(key: &FlowKey, seed: u32) -> u32 {
    key.hash(seed ^ SECOND_CHOICE_SALT)
}

/// The Maglev slot a flow hash picks in a table of `table_size` slots
/// (never 0: the caller checks).
#[inline(always)]
pub fn slot_index(hash: u32, table_size: u32) -> u32 {
    hash % table_size
}

/// Whether the least-load scheduler takes its second candidate over its
/// first: only when both loads are known and the second is strictly
/// lower (without both figures there is nothing to compare, and a tie
/// goes to the first, so equal loads leave it to Maglev).
#[inline(always)]
pub fn second_wins(first_load: u32, second_load: u32) -> bool {
    first_load != LOAD_UNKNOWN && second_load != LOAD_UNKNOWN && second_load < first_load
}

/// The maps the decision reads. Lookups that miss return `None`, as the
/// kernel's do.
pub trait DecisionMaps {
    /// An entry the data plane writes after deciding (a flow's last-seen
    /// time, a session's last use): a mutable reference into the map there,
    /// a shared one into a snapshot.
    type Entry<'a, T: 'a>: Deref<Target = T>
    where
        Self: 'a;

    /// The flow table's entry for `key`.
    fn flow(&self, key: &FlowKey) -> Option<Self::Entry<'_, FlowValue>>;
    /// `LB_VIP_TAGS` at `vip_id` (`None` past the map's end).
    fn vip_tag(&self, vip_id: u32) -> Option<&VipTag>;
    /// The VIP map's value for `key`.
    fn vip(&self, key: &VipKey) -> Option<VipInfo>;
    /// The worker slot `id` (`None` past the map's end).
    fn backend(&self, id: u32) -> Option<&Backend>;
    /// The worker a client is pinned to.
    fn pin(&self, client: &StickyKey) -> Option<u32>;
    /// A client's sticky session.
    fn session(&self, client: &StickyKey) -> Option<Self::Entry<'_, StickyValue>>;
    /// Slot `index` of VIP `vip_id`'s Maglev table, as stored (it may be
    /// [`NO_BACKEND`]).
    fn slot(&self, vip_id: u32, index: u32) -> Option<u32>;
    /// Worker `id`'s load figure, [`LOAD_UNKNOWN`] if there is none.
    fn load(&self, id: u32) -> u32;
    /// The flow hash's seed.
    fn hash_seed(&self) -> u32;
    /// CLOCK_MONOTONIC_COARSE, which flows are timed by.
    fn coarse_now(&self) -> u64;
    /// CLOCK_MONOTONIC, which sessions are timed by.
    fn now(&self) -> u64;
}

/// A flow the flow table decides.
pub struct Followed<'m, E> {
    /// Its entry, for the data plane to touch.
    pub entry: E,
    /// The recorded worker.
    pub backend_id: u32,
    /// Its slot.
    pub backend: &'m Backend,
    /// The coarse clock's reading the idle time was measured at.
    pub now: u64,
}

/// Why the flow table does not decide a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    /// A SYN opens a new connection by definition: no lookup.
    Syn,
    /// No entry.
    Absent,
    /// The entry's VIP id is past the end of `LB_VIP_TAGS`.
    VipPastMap,
    /// The entry's VIP was removed or its id reused since.
    VipReplaced,
    /// Idle past the VIP's idle timeout.
    Expired {
        /// The timeout, seconds.
        idle_timeout_s: u32,
    },
    /// The recorded worker's slot does not exist.
    NoWorker,
    /// The recorded worker may not keep it (down, unreachable, removed,
    /// replaced, or serving another VIP).
    WorkerRefuses,
}

/// Step 1: the flow table's worker for `key`, or why not.
#[inline(always)]
fn follow<'m, M: DecisionMaps>(
    maps: &'m M,
    key: &FlowKey,
) -> Result<Followed<'m, M::Entry<'m, FlowValue>>, Missed> {
    let entry = maps.flow(key).ok_or(Missed::Absent)?;
    let vip_id = entry.vip_id;
    let tag = maps.vip_tag(vip_id).ok_or(Missed::VipPastMap)?;
    if tag.tag != entry.vip_tag {
        return Err(Missed::VipReplaced);
    }
    let now = maps.coarse_now();
    if flow_expired(now, entry.last_seen_ns, tag.idle_timeout_s) {
        let idle_timeout_s = tag.idle_timeout_s;
        return Err(Missed::Expired { idle_timeout_s });
    }
    let backend_id = entry.backend_id;
    let backend = maps.backend(backend_id).ok_or(Missed::NoWorker)?;
    if !backend.keeps_flows(vip_id, entry.backend_generation) {
        return Err(Missed::WorkerRefuses);
    }
    Ok(Followed {
        entry,
        backend_id,
        backend,
        now,
    })
}

/// A non-empty slot of a VIP's Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The flow hash.
    pub hash: u32,
    /// The slot it indexes.
    pub slot: u32,
    /// The worker the slot holds.
    pub worker: u32,
}

/// What the VIP's scheduler picks for a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// The VIP has no table, or Maglev's slot is empty: no worker.
    Empty,
    /// Maglev's pick.
    Maglev(Pick),
    /// Least-load's first candidate, its second's slot being empty.
    SecondEmpty(Pick),
    /// Least-load between two candidates and their loads.
    Weighed {
        /// The first candidate (Maglev's pick).
        first: Pick,
        /// The second, from an independent hash.
        second: Pick,
        /// The first's load figure.
        first_load: u32,
        /// The second's.
        second_load: u32,
        /// Whether the second won ([`second_wins`]).
        second_won: bool,
    },
}

impl Schedule {
    /// The worker picked, if any.
    #[inline(always)]
    pub fn worker(&self) -> Option<u32> {
        match self {
            Self::Empty => None,
            Self::Maglev(pick) | Self::SecondEmpty(pick) => Some(pick.worker),
            Self::Weighed {
                first,
                second,
                second_won,
                ..
            } => Some(if *second_won { second } else { first }.worker),
        }
    }
}

/// The slot of `vip`'s Maglev table that `hash` picks, if it holds a
/// worker (`vip.table_size` is not 0: the caller checks).
#[inline(always)]
pub fn pick<M: DecisionMaps>(maps: &M, vip: &VipInfo, hash: u32) -> Option<Pick> {
    let slot = slot_index(hash, vip.table_size);
    let worker = maps.slot(vip.id, slot)?;
    (worker != NO_BACKEND).then_some(Pick { hash, slot, worker })
}

/// Steps 4 and 5: the VIP's scheduler, Maglev or the less loaded of two
/// Maglev picks from independent hashes.
#[inline(always)]
pub fn schedule<M: DecisionMaps>(maps: &M, key: &FlowKey, vip: &VipInfo) -> Schedule {
    if vip.table_size == 0 {
        return Schedule::Empty;
    }
    let seed = maps.hash_seed();
    let Some(first) = pick(maps, vip, first_hash(key, seed)) else {
        return Schedule::Empty;
    };
    if vip.scheduler != SCHED_LEAST_LOAD {
        return Schedule::Maglev(first);
    }
    let Some(second) = pick(maps, vip, second_hash(key, seed)) else {
        return Schedule::SecondEmpty(first);
    };
    let first_load = maps.load(first.worker);
    let second_load = maps.load(second.worker);
    Schedule::Weighed {
        first,
        second,
        first_load,
        second_load,
        second_won: second_wins(first_load, second_load),
    }
}

/// Why a client's fresh-looking session did not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Unused for longer than the VIP's TTL.
    Expired,
    /// Its worker can't take a new flow (or the slot holds another).
    Unusable,
}

/// How a new flow's worker is chosen (steps 2 to 5).
pub enum Rule<S, T> {
    /// The client's pin.
    Pinned(u32),
    /// The client's sticky session, used at `now`.
    Sticky {
        /// Its worker.
        backend_id: u32,
        /// The session, for the data plane to refresh.
        session: S,
        /// CLOCK_MONOTONIC.
        now: u64,
    },
    /// The scheduler.
    Scheduled {
        /// Its pick.
        scheduled: T,
        /// Why the client's session did not decide, if it has one.
        stale: Option<Stale>,
        /// For a sticky VIP: the session the pick becomes, its key and
        /// CLOCK_MONOTONIC.
        becomes_session: Option<(StickyKey, u64)>,
    },
}

/// The last step of a new flow's choice. A trait, not a closure: the data
/// plane's must inline, and stable Rust can't mark a closure
/// `#[inline(always)]`.
pub trait Scheduler {
    /// What it picks.
    type Pick;
    /// Picks.
    fn pick(self) -> Self::Pick;
}

/// The VIP's scheduler for flow `key` ([`schedule`]).
struct ForFlow<'a, M> {
    maps: &'a M,
    key: &'a FlowKey,
    vip: &'a VipInfo,
}

impl<M: DecisionMaps> Scheduler for ForFlow<'_, M> {
    type Pick = Schedule;

    #[inline(always)]
    fn pick(self) -> Schedule {
        schedule(self.maps, self.key, self.vip)
    }
}

/// Steps 2 to 5 for a new flow of `vip` from `src`: the client's usable
/// pin, its fresh session on a usable worker, or what `scheduler` picks
/// (`lb explain` without a client port brings its own).
#[inline(always)]
pub fn choose<'m, M: DecisionMaps, P: Scheduler>(
    maps: &'m M,
    src: &[u8; 16],
    vip: &VipInfo,
    scheduler: P,
) -> Rule<M::Entry<'m, StickyValue>, P::Pick> {
    // One call of the scheduler, so that the data plane inlines it once.
    let (stale, becomes_session) = match client_rule(maps, src, vip) {
        ClientRule::Pinned(id) => return Rule::Pinned(id),
        ClientRule::Sticky {
            backend_id,
            session,
            now,
        } => {
            return Rule::Sticky {
                backend_id,
                session,
                now,
            }
        }
        ClientRule::Neither {
            stale,
            becomes_session,
        } => (stale, becomes_session),
    };
    Rule::Scheduled {
        scheduled: scheduler.pick(),
        stale,
        becomes_session,
    }
}

/// Steps 2 and 3: what the client's own pin or session decides.
enum ClientRule<S> {
    Pinned(u32),
    Sticky {
        backend_id: u32,
        session: S,
        now: u64,
    },
    Neither {
        stale: Option<Stale>,
        becomes_session: Option<(StickyKey, u64)>,
    },
}

#[inline(always)]
fn client_rule<'m, M: DecisionMaps>(
    maps: &'m M,
    src: &[u8; 16],
    vip: &VipInfo,
) -> ClientRule<M::Entry<'m, StickyValue>> {
    let neither = ClientRule::Neither {
        stale: None,
        becomes_session: None,
    };
    if vip.flags & (VIP_STICKY | VIP_HAS_PINS) == 0 {
        return neither;
    }
    let client = StickyKey {
        client: mask_prefix(src, vip.sticky_prefix),
        vip_id: vip.id,
    };
    if vip.flags & VIP_HAS_PINS != 0 {
        if let Some(pinned) = maps.pin(&client) {
            if usable(maps, pinned, vip).is_some() {
                return ClientRule::Pinned(pinned);
            }
        }
    }
    if vip.flags & VIP_STICKY == 0 {
        return neither;
    }
    let now = maps.now();
    let mut stale = None;
    if let Some(session) = maps.session(&client) {
        let backend_id = session.backend_id;
        if !session_fresh(now, session.last_ns, vip.sticky_ttl_s) {
            stale = Some(Stale::Expired);
        } else if usable(maps, backend_id, vip) != Some(session.backend_generation) {
            stale = Some(Stale::Unusable);
        } else {
            return ClientRule::Sticky {
                backend_id,
                session,
                now,
            };
        }
    }
    ClientRule::Neither {
        stale,
        becomes_session: Some((client, now)),
    }
}

/// The generation of worker `id` if it can take a new flow of `vip`.
#[inline(always)]
fn usable<M: DecisionMaps>(maps: &M, id: u32, vip: &VipInfo) -> Option<u32> {
    let backend = maps.backend(id)?;
    backend
        .takes_new_flows(vip.id)
        .then_some(backend.generation)
}

/// What the data plane does with a packet of flow `key`.
pub enum Decided<'m, M: DecisionMaps + 'm> {
    /// The flow table decides.
    Established(Followed<'m, M::Entry<'m, FlowValue>>),
    /// A new flow of `vip`.
    New {
        /// Why the flow table did not decide.
        missed: Missed,
        /// The VIP.
        vip: VipInfo,
        /// How its worker is chosen.
        rule: Rule<M::Entry<'m, StickyValue>, Schedule>,
    },
    /// Not the flow table's, and no VIP: not the balancer's packet.
    NotVip(Missed),
}

/// The whole decision for a packet of flow `key` (`syn`: a TCP SYN, which
/// skips the flow table): the flow table, then the VIP's pin, session and
/// scheduler.
#[inline(always)]
pub fn decide<'m, M: DecisionMaps>(maps: &'m M, key: &FlowKey, syn: bool) -> Decided<'m, M> {
    let missed = if syn {
        Missed::Syn
    } else {
        match follow(maps, key) {
            Ok(followed) => return Decided::Established(followed),
            Err(missed) => missed,
        }
    };
    let vip_key = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    let Some(vip) = maps.vip(&vip_key) else {
        return Decided::NotVip(missed);
    };
    let scheduler = ForFlow {
        maps,
        key,
        vip: &vip,
    };
    let rule = choose(maps, &key.src, &vip, scheduler);
    Decided::New { missed, vip, rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NS_PER_S;

    #[test]
    fn a_flow_expires_only_past_its_idle_timeout() {
        assert!(!flow_expired(310 * SEC, 10 * SEC, 300));
        assert!(flow_expired(310 * SEC + 1, 10 * SEC, 300));
        assert!(
            !flow_expired(5 * SEC, 6 * SEC, 300),
            "a reading from the future"
        );
    }

    #[test]
    fn a_session_is_fresh_strictly_within_its_ttl() {
        assert!(session_fresh(10 * SEC, 9 * SEC, 2));
        assert!(!session_fresh(11 * SEC, 9 * SEC, 2));
        assert!(!session_fresh(10 * SEC, 9 * SEC, 0));
    }

    #[test]
    fn least_load_takes_the_second_only_when_it_is_known_and_lower() {
        assert!(second_wins(500, 100));
        assert!(!second_wins(100, 500));
        assert!(!second_wins(100, 100), "ties go to the first");
        assert!(!second_wins(LOAD_UNKNOWN, 100));
        assert!(!second_wins(500, LOAD_UNKNOWN));
    }

    #[test]
    fn the_two_hashes_differ_and_index_within_the_table() {
        let key = FlowKey {
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        assert_ne!(first_hash(&key, 7), second_hash(&key, 7));
        assert!(slot_index(first_hash(&key, 7), 13) < 13);
    }

    use crate::balancer::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_VALID, FAMILY_V4, LOAD_SCALE};

    const NOW: u64 = 1000 * SEC;
    const VIP_TAG: u32 = 5;

    /// One VIP (id 0) with two workers (ids 0 and 1) sharing a 7-slot
    /// table, one client, and whatever the test puts in the flow table,
    /// pin and session maps.
    struct Fake {
        flow: Option<FlowValue>,
        tags: [VipTag; 1],
        vip: Option<VipInfo>,
        backends: [Backend; 2],
        pin: Option<u32>,
        session: Option<StickyValue>,
        table: [u32; 7],
        loads: [u32; 2],
    }

    impl DecisionMaps for Fake {
        type Entry<'a, T: 'a> = &'a T;

        fn flow(&self, _: &FlowKey) -> Option<&FlowValue> {
            self.flow.as_ref()
        }
        fn vip_tag(&self, vip_id: u32) -> Option<&VipTag> {
            self.tags.get(vip_id as usize)
        }
        fn vip(&self, _: &VipKey) -> Option<VipInfo> {
            self.vip
        }
        fn backend(&self, id: u32) -> Option<&Backend> {
            self.backends.get(id as usize)
        }
        fn pin(&self, _: &StickyKey) -> Option<u32> {
            self.pin
        }
        fn session(&self, _: &StickyKey) -> Option<&StickyValue> {
            self.session.as_ref()
        }
        fn slot(&self, _: u32, index: u32) -> Option<u32> {
            self.table.get(index as usize).copied()
        }
        fn load(&self, id: u32) -> u32 {
            self.loads.get(id as usize).copied().unwrap_or(LOAD_UNKNOWN)
        }
        fn hash_seed(&self) -> u32 {
            42
        }
        fn coarse_now(&self) -> u64 {
            NOW
        }
        fn now(&self) -> u64 {
            NOW
        }
    }

    fn worker() -> Backend {
        Backend {
            flags: BACKEND_VALID,
            generation: 1,
            ..Backend::default()
        }
    }

    fn fake() -> Fake {
        Fake {
            flow: None,
            tags: [VipTag {
                tag: VIP_TAG,
                idle_timeout_s: 300,
            }],
            vip: Some(VipInfo {
                table_size: 7,
                sticky_ttl_s: 60,
                sticky_prefix: 32,
                tag: VIP_TAG,
                ..VipInfo::default()
            }),
            backends: [worker(), worker()],
            pin: None,
            session: None,
            table: [0, 1, 0, 1, 0, 1, 0],
            loads: [LOAD_UNKNOWN; 2],
        }
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            ..FlowKey::default()
        }
    }

    /// A flow recorded on worker `backend_id`, last seen `idle_s` ago.
    fn recorded(backend_id: u32, idle_s: u64) -> FlowValue {
        FlowValue {
            backend_id,
            vip_tag: VIP_TAG,
            backend_generation: 1,
            last_seen_ns: NOW - idle_s * SEC,
            ..FlowValue::default()
        }
    }

    fn session(backend_id: u32, idle_s: u64) -> StickyValue {
        StickyValue {
            backend_id,
            backend_generation: 1,
            last_ns: NOW - idle_s * SEC,
        }
    }

    /// The worker a packet goes to, and how: "flow", "pin", "session" or
    /// "scheduler"; the flow table's miss for a new flow.
    fn outcome(maps: &Fake, syn: bool) -> (Option<u32>, &'static str, Option<Missed>) {
        match decide(maps, &key(40000), syn) {
            Decided::Established(followed) => (Some(followed.backend_id), "flow", None),
            Decided::New { missed, rule, .. } => match rule {
                Rule::Pinned(id) => (Some(id), "pin", Some(missed)),
                Rule::Sticky { backend_id, .. } => (Some(backend_id), "session", Some(missed)),
                Rule::Scheduled { scheduled, .. } => {
                    (scheduled.worker(), "scheduler", Some(missed))
                }
            },
            Decided::NotVip(missed) => (None, "not a VIP", Some(missed)),
        }
    }

    fn sticky_with_pins(mut maps: Fake) -> Fake {
        if let Some(vip) = &mut maps.vip {
            vip.flags = VIP_STICKY | VIP_HAS_PINS;
        }
        maps
    }

    #[test]
    fn a_live_flow_wins_over_a_pin_and_a_session_but_not_for_a_syn() {
        let mut maps = sticky_with_pins(fake());
        maps.flow = Some(recorded(1, 10));
        maps.pin = Some(0);
        maps.session = Some(session(0, 1));
        assert_eq!(outcome(&maps, false), (Some(1), "flow", None));
        assert_eq!(outcome(&maps, true), (Some(0), "pin", Some(Missed::Syn)));
    }

    #[test]
    fn a_flow_is_not_followed_past_its_idle_timeout_or_its_vip_or_worker() {
        let mut maps = fake();
        maps.flow = Some(recorded(1, 301));
        let expired = Missed::Expired {
            idle_timeout_s: 300,
        };
        assert_eq!(outcome(&maps, false).2, Some(expired));
        maps.flow = Some(recorded(1, 300));
        assert_eq!(outcome(&maps, false).1, "flow");
        maps.backends[1].flags |= BACKEND_DRAINING;
        assert_eq!(outcome(&maps, false).1, "flow", "draining keeps flows");
        maps.backends[1].flags |= BACKEND_DOWN;
        assert_eq!(outcome(&maps, false).2, Some(Missed::WorkerRefuses));
        maps.flow = Some(recorded(2, 0));
        assert_eq!(outcome(&maps, false).2, Some(Missed::NoWorker));
        maps.flow.as_mut().unwrap().vip_tag = VIP_TAG + 1;
        assert_eq!(outcome(&maps, false).2, Some(Missed::VipReplaced));
        maps.flow.as_mut().unwrap().vip_id = 1;
        assert_eq!(outcome(&maps, false).2, Some(Missed::VipPastMap));
        maps.flow = None;
        assert_eq!(outcome(&maps, false).2, Some(Missed::Absent));
        maps.vip = None;
        assert_eq!(
            outcome(&maps, false),
            (None, "not a VIP", Some(Missed::Absent))
        );
    }

    #[test]
    fn a_usable_pin_comes_before_a_fresh_session_and_that_before_the_scheduler() {
        let mut maps = sticky_with_pins(fake());
        maps.pin = Some(1);
        maps.session = Some(session(0, 59));
        assert_eq!(outcome(&maps, true).1, "pin");
        maps.backends[1].flags |= BACKEND_DRAINING;
        assert_eq!(
            outcome(&maps, true),
            (Some(0), "session", Some(Missed::Syn))
        );
        maps.session = Some(session(0, 60));
        let Decided::New { rule, .. } = decide(&maps, &key(40000), true) else {
            panic!("a new flow");
        };
        let Rule::Scheduled {
            stale,
            becomes_session,
            ..
        } = rule
        else {
            panic!("scheduled");
        };
        assert_eq!(stale, Some(Stale::Expired));
        assert_eq!(becomes_session.map(|(_, now)| now), Some(NOW));
    }

    #[test]
    fn a_session_on_a_replaced_worker_is_unusable() {
        let mut maps = sticky_with_pins(fake());
        maps.session = Some(session(0, 1));
        assert_eq!(outcome(&maps, true).1, "session");
        maps.backends[0].generation = 2;
        let Decided::New {
            rule: Rule::Scheduled { stale, .. },
            ..
        } = decide(&maps, &key(40000), true)
        else {
            panic!("scheduled");
        };
        assert_eq!(stale, Some(Stale::Unusable));
    }

    #[test]
    fn without_sticky_sessions_or_pins_neither_is_read() {
        let mut maps = fake();
        maps.pin = Some(1);
        maps.session = Some(session(1, 1));
        assert_eq!(outcome(&maps, true).1, "scheduler");
    }

    /// A client port whose two least-load candidates differ.
    fn split_port(maps: &Fake, vip: &VipInfo) -> u16 {
        (1..2000u16)
            .find(|&p| {
                let seed = maps.hash_seed();
                let first = pick(maps, vip, first_hash(&key(p), seed));
                let second = pick(maps, vip, second_hash(&key(p), seed));
                first.map(|p| p.worker) != second.map(|p| p.worker)
            })
            .unwrap()
    }

    #[test]
    fn least_load_takes_its_second_candidate_only_when_known_and_lower() {
        let mut maps = fake();
        let mut vip = maps.vip.unwrap();
        vip.scheduler = SCHED_LEAST_LOAD;
        let key = key(split_port(&maps, &vip));
        let Schedule::Weighed { first, second, .. } = schedule(&maps, &key, &vip) else {
            panic!("weighed");
        };
        maps.loads[first.worker as usize] = LOAD_SCALE / 2;
        maps.loads[second.worker as usize] = LOAD_SCALE / 10;
        assert_eq!(schedule(&maps, &key, &vip).worker(), Some(second.worker));
        maps.loads[second.worker as usize] = LOAD_SCALE / 2;
        assert_eq!(schedule(&maps, &key, &vip).worker(), Some(first.worker));
        maps.loads[second.worker as usize] = LOAD_UNKNOWN;
        assert_eq!(schedule(&maps, &key, &vip).worker(), Some(first.worker));
        maps.table[second.slot as usize] = NO_BACKEND;
        assert_eq!(
            schedule(&maps, &key, &vip),
            Schedule::SecondEmpty(first),
            "an empty second slot leaves the first"
        );
        vip.scheduler = crate::balancer::SCHED_MAGLEV;
        assert_eq!(schedule(&maps, &key, &vip), Schedule::Maglev(first));
        maps.table[first.slot as usize] = NO_BACKEND;
        assert_eq!(schedule(&maps, &key, &vip), Schedule::Empty);
        vip.table_size = 0;
        assert_eq!(schedule(&maps, &key, &vip), Schedule::Empty);
    }
}
