//! What the state machines share: which states their moves can reach.

/// Every state reachable from `beginnings` by `next` on any of `events`,
/// breadth first. The machines' `restore` checks stored states against this,
/// so the legal moves are written once, in `next`.
pub(crate) fn reachable<S: PartialEq, E>(
    beginnings: Vec<S>,
    events: &[E],
    next: impl Fn(&S, &E) -> Option<S>,
) -> Vec<S> {
    let mut seen = beginnings;
    let mut at = 0;
    while at < seen.len() {
        for event in events {
            if let Some(after) = next(&seen[at], event) {
                if !seen.contains(&after) {
                    seen.push(after);
                }
            }
        }
        at += 1;
    }
    seen
}
