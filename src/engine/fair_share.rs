//! Fair admission across tenants (the API key a request was made with): when a seat frees, the
//! next waiting sequence is the first one of the tenant that holds the fewest seats, and among
//! tenants holding as many, of the one admitted longest ago (round robin), not simply the oldest
//! sequence; so one key's 200 queued requests do not hold back another key's one. A sequence that
//! ran before (preempted, or put back for want of blocks) goes first, as before: it was admitted
//! fairly already. Requests without a tenant share one.
use std::collections::HashMap;
use std::sync::Arc;

/// Whose a request is: the API key's name (or its audit name for a key given on the command line).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(pub Arc<str>);

impl Tenant {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
}

/// Seats (running choices) per tenant.
#[derive(Default)]
pub struct Seats(HashMap<Option<Tenant>, usize>);

impl Seats {
    pub fn add(&mut self, tenant: &Option<Tenant>, n: usize) {
        *self.0.entry(tenant.clone()).or_default() += n;
    }
    fn of(&self, tenant: &Option<Tenant>) -> usize {
        self.0.get(tenant).copied().unwrap_or(0)
    }
}

/// A waiting sequence as admission sees it.
pub struct Candidate<'a> {
    pub tenant: &'a Option<Tenant>,
    /// It ran before (it was preempted or put back).
    pub resumed: bool,
}

/// When each tenant was last admitted (a counter, not a time), for round robin among equals.
#[derive(Default)]
pub struct FairShare {
    last: HashMap<Option<Tenant>, u64>,
    clock: u64,
}

impl FairShare {
    /// The index of the waiting sequence to admit next, given the seats each tenant holds now.
    pub fn next_to_admit<'a>(
        &self,
        waiting: impl IntoIterator<Item = Candidate<'a>>,
        seats: &Seats,
    ) -> Option<usize> {
        // (seats of its tenant, when its tenant was last admitted, index): the least wins.
        let mut best: Option<(usize, u64, usize)> = None;
        for (i, c) in waiting.into_iter().enumerate() {
            if i == 0 && c.resumed {
                return Some(0);
            }
            let key = (
                seats.of(c.tenant),
                self.last.get(c.tenant).copied().unwrap_or(0),
            );
            if best.is_none_or(|(s, l, _)| key < (s, l)) {
                best = Some((key.0, key.1, i));
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// Records that a sequence of `tenant` was admitted.
    pub fn admitted(&mut self, tenant: &Option<Tenant>) {
        self.clock += 1;
        self.last.insert(tenant.clone(), self.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Option<Tenant> {
        Some(Tenant::new(name))
    }

    #[test]
    fn the_tenant_with_fewest_seats_goes_next_and_resumed_sequences_first() {
        let (a, b) = (t("a"), t("b"));
        let queue = [&a, &a, &a, &b, &a];
        let cands = |resumed: bool| {
            queue.iter().enumerate().map(move |(i, &tenant)| Candidate {
                tenant,
                resumed: resumed && i == 0,
            })
        };
        let mut fair = FairShare::default();
        let mut seats = Seats::default();
        assert_eq!(
            fair.next_to_admit(cands(false), &seats),
            Some(0),
            "all even: oldest"
        );
        fair.admitted(&a);
        assert_eq!(
            fair.next_to_admit(cands(false), &seats),
            Some(3),
            "as many seats: b was admitted longer ago"
        );
        seats.add(&b, 1);
        assert_eq!(
            fair.next_to_admit(cands(false), &seats),
            Some(0),
            "b holds more"
        );
        seats.add(&a, 2);
        assert_eq!(
            fair.next_to_admit(cands(false), &seats),
            Some(3),
            "a holds more"
        );
        assert_eq!(
            fair.next_to_admit(cands(true), &seats),
            Some(0),
            "resumed first"
        );
        assert_eq!(fair.next_to_admit(std::iter::empty(), &seats), None);
    }
}
