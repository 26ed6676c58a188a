//! The logical device grid: rank ↔ (stage, replica, context index, tensor index) and the
//! groups it implies.
//!
//! Context parallelism has no place of its own in a [`RankOrder`]: it sits just outside the
//! tensor-parallel index, so the order's tp slot numbers the pair `cp_index·tp + tp_index`.
//! With PanGu-α's default order that is Megatron-core's `tp-cp-dp-pp` (fastest first): a cp
//! group is tp-strided consecutive ranks, and with cp = 1 every rank is where it was.

use serde::Serialize;

use crate::strategy::{Axis, RankOrder};

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Coordinates of a rank on the parallel axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Coords {
    /// Pipeline stage.
    pub pp: u32,
    /// Data-parallel replica.
    pub dp: u32,
    /// Tensor-parallel index.
    pub tp: u32,
    /// Context-parallel index (which sequence chunks the rank holds).
    #[serde(skip_serializing_if = "is_zero")]
    pub cp: u32,
}

/// The grid of `pp × dp × cp × tp` ranks in a given numbering order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mesh {
    /// Pipeline stages.
    pub pp: u32,
    /// Data-parallel degree.
    pub dp: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Context-parallel degree.
    #[serde(skip_serializing_if = "is_one")]
    pub cp: u32,
    /// Numbering order, slowest axis first.
    #[serde(serialize_with = "ser_order")]
    pub order: RankOrder,
}

fn ser_order<S: serde::Serializer>(o: &RankOrder, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&o.to_string())
}

impl Mesh {
    /// Number of ranks.
    pub fn size(&self) -> u32 {
        self.pp * self.dp * self.tp * self.cp.max(1)
    }

    /// Extent of an order slot (the tp slot holds cp × tp).
    fn extent(&self, a: Axis) -> u32 {
        match a {
            Axis::Pp => self.pp,
            Axis::Dp => self.dp,
            Axis::Tp | Axis::Cp => self.tp * self.cp.max(1),
        }
    }

    /// Value of an order slot.
    fn slot(&self, c: Coords, a: Axis) -> u32 {
        match a {
            Axis::Pp => c.pp,
            Axis::Dp => c.dp,
            Axis::Tp | Axis::Cp => c.cp * self.tp + c.tp,
        }
    }

    /// The rank at given coordinates. With PanGu-α's order this is
    /// `stage·(dp·cp·tp) + dp_index·(cp·tp) + cp_index·tp + tp_index`.
    pub fn rank(&self, c: Coords) -> u32 {
        let [a, b, d] = self.order.0;
        (self.slot(c, a) * self.extent(b) + self.slot(c, b)) * self.extent(d) + self.slot(c, d)
    }

    /// The coordinates of a rank.
    pub fn coords(&self, rank: u32) -> Coords {
        let [a, b, d] = self.order.0;
        let vd = rank % self.extent(d);
        let vb = (rank / self.extent(d)) % self.extent(b);
        let va = rank / (self.extent(d) * self.extent(b));
        let mut c = Coords {
            pp: 0,
            dp: 0,
            tp: 0,
            cp: 0,
        };
        for (axis, v) in [(a, va), (b, vb), (d, vd)] {
            match axis {
                Axis::Pp => c.pp = v,
                Axis::Dp => c.dp = v,
                Axis::Tp | Axis::Cp => {
                    c.tp = v % self.tp.max(1);
                    c.cp = v / self.tp.max(1);
                }
            }
        }
        c
    }

    /// Whether a rank is the first member of its group along `axis`.
    fn first_of_group(&self, axis: Axis, c: Coords) -> bool {
        match axis {
            Axis::Pp => c.pp == 0,
            Axis::Dp => c.dp == 0 && c.cp == 0,
            Axis::Tp => c.tp == 0,
            Axis::Cp => c.cp == 0,
        }
    }

    /// All groups along `axis`: each is the ranks that differ only in that coordinate, in
    /// coordinate order (for [`Axis::Dp`]: in dp and cp, dp-major). Groups are listed in rank
    /// order of their first member.
    pub fn groups(&self, axis: Axis) -> Vec<Vec<u32>> {
        (0..self.size())
            .filter(|&r| self.first_of_group(axis, self.coords(r)))
            .map(|r| self.group_of(axis, r))
            .collect()
    }

    /// The group along `axis` that holds `rank`. The data-parallel group is the
    /// gradient-reduction group: dp·cp ranks, dp index major, cp index minor (the rank order
    /// under PanGu-α's numbering).
    pub fn group_of(&self, axis: Axis, rank: u32) -> Vec<u32> {
        let c = self.coords(rank);
        match axis {
            Axis::Pp => (0..self.pp)
                .map(|i| self.rank(Coords { pp: i, ..c }))
                .collect(),
            Axis::Tp => (0..self.tp)
                .map(|i| self.rank(Coords { tp: i, ..c }))
                .collect(),
            Axis::Cp => (0..self.cp.max(1))
                .map(|i| self.rank(Coords { cp: i, ..c }))
                .collect(),
            Axis::Dp => (0..self.dp)
                .flat_map(|d| (0..self.cp.max(1)).map(move |k| (d, k)))
                .map(|(d, k)| self.rank(Coords { dp: d, cp: k, ..c }))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pangu_rank_formula() {
        let m = Mesh {
            pp: 16,
            dp: 16,
            tp: 8,
            cp: 1,
            order: RankOrder::PANGU,
        };
        for r in [0, 1, 7, 8, 127, 128, 2047] {
            let c = m.coords(r);
            assert_eq!(r, c.pp * (16 * 8) + c.dp * 8 + c.tp);
            assert_eq!(m.rank(c), r);
        }
        assert_eq!(m.group_of(Axis::Tp, 9), (8..16).collect::<Vec<_>>());
        assert_eq!(
            m.group_of(Axis::Pp, 3),
            (0..16).map(|s| s * 128 + 3).collect::<Vec<_>>()
        );
        assert_eq!(
            m.group_of(Axis::Dp, 3),
            (0..16).map(|d| d * 8 + 3).collect::<Vec<_>>()
        );
    }

    #[test]
    fn groups_partition_the_ranks_for_every_order() {
        for order in RankOrder::all() {
            let m = Mesh {
                pp: 2,
                dp: 3,
                tp: 4,
                cp: 1,
                order,
            };
            for r in 0..m.size() {
                assert_eq!(m.rank(m.coords(r)), r);
            }
            for axis in [Axis::Pp, Axis::Dp, Axis::Tp] {
                let mut all: Vec<u32> = m.groups(axis).into_iter().flatten().collect();
                all.sort_unstable();
                assert_eq!(all, (0..24).collect::<Vec<_>>(), "{order} {axis:?}");
            }
        }
    }

    #[test]
    fn cp_sits_between_tp_and_dp_and_partitions_the_ranks() {
        // Megatron-core's tp-cp-dp-pp, fastest first: tp 2, cp 2, dp 2, pp 2.
        let m = Mesh {
            pp: 2,
            dp: 2,
            tp: 2,
            cp: 2,
            order: RankOrder::PANGU,
        };
        assert_eq!(m.size(), 16);
        for r in 0..16 {
            let c = m.coords(r);
            assert_eq!(r, c.pp * 8 + c.dp * 4 + c.cp * 2 + c.tp);
            assert_eq!(m.rank(c), r);
        }
        assert_eq!(m.group_of(Axis::Tp, 5), vec![4, 5]);
        assert_eq!(m.group_of(Axis::Cp, 5), vec![5, 7]);
        // The gradient group spans dp × cp.
        assert_eq!(m.group_of(Axis::Dp, 5), vec![1, 3, 5, 7]);
        assert_eq!(m.group_of(Axis::Pp, 5), vec![5, 13]);
        for order in RankOrder::all() {
            let m = Mesh { order, ..m };
            for axis in [Axis::Pp, Axis::Dp, Axis::Tp, Axis::Cp] {
                let mut all: Vec<u32> = m.groups(axis).into_iter().flatten().collect();
                all.sort_unstable();
                assert_eq!(all, (0..16).collect::<Vec<_>>(), "{order} {axis:?}");
            }
        }
    }
}
