//! A new flow's worker, as the shared decision (`lb_common::decide`)
//! chose it, and the writes that go with it: the pin or session hit
//! counted, the session refreshed or the scheduler's pick made the
//! client's session, the flow recorded (a `fullnat` flow by the NAT
//! program, once it has a port).

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    balancer::{StickyValue, VipInfo, FORWARD_FULLNAT},
    capture::reason,
    counters::GlobalCounters,
    decide::{Rule, Schedule},
    nat::NO_NAT_SOURCE,
};

use crate::{
    flow::{self, Decision, Flow},
    maps::{LB_BACKENDS, LB_STICKY},
};

/// The worker of a new flow of `vip` that `rule` chose (recorded unless
/// the packet is a RST); `None` when the VIP has no usable worker.
#[inline(always)]
pub fn new_flow(
    flow: &Flow,
    vip: &VipInfo,
    rule: Rule<&mut StickyValue, Schedule>,
    counters: &mut GlobalCounters,
) -> Option<Decision> {
    let (backend_id, reason, becomes_session) = match rule {
        Rule::Pinned(backend_id) => {
            counters.pin_hits += 1;
            (backend_id, reason::PINNED, None)
        }
        Rule::Sticky {
            backend_id,
            session,
            now,
        } => {
            session.last_ns = now;
            counters.sticky_hits += 1;
            (backend_id, reason::STICKY, None)
        }
        Rule::Scheduled {
            scheduled,
            becomes_session,
            ..
        } => (scheduled.worker()?, reason::NEW_FLOW, becomes_session),
    };
    let backend = LB_BACKENDS.get(backend_id)?;
    if let Some((client, now)) = becomes_session {
        let session = StickyValue {
            backend_id,
            backend_generation: backend.generation,
            last_ns: now,
        };
        // A full table evicts its least recently used session: nothing to
        // count.
        let _ = LB_STICKY.insert(&client, &session, BPF_ANY.into());
    }
    // A `fullnat` flow is recorded by the NAT program, with its port.
    if backend.forward != FORWARD_FULLNAT {
        flow::record(flow, vip, backend_id, backend, counters);
    }
    Some(Decision {
        backend_id,
        backend,
        vip_id: vip.id,
        new_flow: true,
        reason,
        nat: (NO_NAT_SOURCE, 0),
    })
}
