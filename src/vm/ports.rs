//! Host ports for guests' SSH forwards: handed out from the configured range,
//! never two at once, next-fit so that a just-freed port is not reused at once.

use std::collections::BTreeSet;

use crate::config::PortRange;

#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    used: BTreeSet<u16>,
    /// Where the next search starts.
    cursor: u16,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> PortAllocator {
        PortAllocator { range, used: BTreeSet::new(), cursor: range.first }
    }

    /// Marks `port` as taken (e.g. by a VM the store remembers). Ports outside the range are ignored.
    pub fn reserve(&mut self, port: u16) {
        if self.range.contains(port) {
            self.used.insert(port);
        }
    }

    /// A free port, or `None` when the whole range is in use.
    pub fn allocate(&mut self) -> Option<u16> {
        let len = self.range.len();
        for i in 0..len {
            let offset = (usize::from(self.cursor - self.range.first) + i) % len;
            let port = self.range.first + offset as u16;
            if self.used.insert(port) {
                self.cursor = if port == self.range.last { self.range.first } else { port + 1 };
                return Some(port);
            }
        }
        None
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_collision_until_exhausted_then_reuse_after_release() {
        let mut p = PortAllocator::new(PortRange { first: 22200, last: 22203 });
        p.reserve(22201);
        let got: Vec<_> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got, vec![22200, 22202, 22203]);
        assert_eq!(p.allocate(), None);
        p.release(22202);
        assert_eq!(p.allocate(), Some(22202));
        assert_eq!(p.in_use(), 4);
    }

    #[test]
    fn next_fit_does_not_hand_back_a_just_freed_port() {
        let mut p = PortAllocator::new(PortRange { first: 100, last: 110 });
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate().unwrap(), a);
    }
}
