//! The logical device grid: rank ↔ (stage, replica, tensor index) and the groups it implies.

use serde::Serialize;

use crate::strategy::{Axis, RankOrder};

/// Coordinates of a rank on the three parallel axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Coords {
    /// Pipeline stage.
    pub pp: u32,
    /// Data-parallel replica.
    pub dp: u32,
    /// Tensor-parallel index.
    pub tp: u32,
}

/// The grid of `pp × dp × tp` ranks in a given numbering order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mesh {
    /// Pipeline stages.
    pub pp: u32,
    /// Data-parallel degree.
    pub dp: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
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
        self.pp * self.dp * self.tp
    }

    fn extent(&self, a: Axis) -> u32 {
        match a {
            Axis::Pp => self.pp,
            Axis::Dp => self.dp,
            Axis::Tp => self.tp,
        }
    }

    fn coord(c: Coords, a: Axis) -> u32 {
        match a {
            Axis::Pp => c.pp,
            Axis::Dp => c.dp,
            Axis::Tp => c.tp,
        }
    }

    /// The rank at given coordinates. With PanGu-α's order this is
    /// `stage·(dp·tp) + dp_index·tp + tp_index`.
    pub fn rank(&self, c: Coords) -> u32 {
        let [a, b, d] = self.order.0;
        (Self::coord(c, a) * self.extent(b) + Self::coord(c, b)) * self.extent(d)
            + Self::coord(c, d)
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
        };
        for (axis, v) in [(a, va), (b, vb), (d, vd)] {
            match axis {
                Axis::Pp => c.pp = v,
                Axis::Dp => c.dp = v,
                Axis::Tp => c.tp = v,
            }
        }
        c
    }

    /// All groups along `axis`: each is the ranks that differ only in that coordinate, in
    /// coordinate order. Groups are listed in rank order of their first member.
    pub fn groups(&self, axis: Axis) -> Vec<Vec<u32>> {
        (0..self.size())
            .filter(|&r| Self::coord(self.coords(r), axis) == 0)
            .map(|r| self.group_of(axis, r))
            .collect()
    }

    /// The group along `axis` that holds `rank`.
    pub fn group_of(&self, axis: Axis, rank: u32) -> Vec<u32> {
        let c = self.coords(rank);
        (0..self.extent(axis))
            .map(|i| {
                let mut c = c;
                match axis {
                    Axis::Pp => c.pp = i,
                    Axis::Dp => c.dp = i,
                    Axis::Tp => c.tp = i,
                }
                self.rank(c)
            })
            .collect()
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
}
