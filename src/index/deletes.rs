//! Per-segment deletion bitmaps. A segment's rows never change; deleting a
//! row writes a new bitmap file (`deletes-G.bin`, G the generation that
//! commits it) beside the segment, and the manifest names the one in force.
//! Format: ceil(rows / 8) bytes, bit `row % 8` of byte `row / 8` set when
//! the row is deleted (little-endian bit order, like numpy's
//! `packbits(..., bitorder="little")`).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The deleted rows of one segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deletes {
    bits: Vec<u8>,
    rows: usize,
    count: usize,
}

impl Deletes {
    /// No row deleted.
    pub fn none(rows: usize) -> Deletes {
        Deletes { bits: vec![0; rows.div_ceil(8)], rows, count: 0 }
    }

    /// Reads a bitmap file for a segment of `rows` rows.
    pub fn read(path: &Path, rows: usize) -> Result<Deletes> {
        let bits = std::fs::read(path).with_context(|| format!("{}: corrupt index: cannot read the deletion bitmap", path.display()))?;
        if bits.len() != rows.div_ceil(8) {
            bail!("{}: corrupt index: the deletion bitmap has {} bytes, {rows} rows need {}", path.display(), bits.len(), rows.div_ceil(8));
        }
        let count = bits.iter().map(|b| b.count_ones() as usize).sum();
        Ok(Deletes { bits, rows, count })
    }

    pub fn is_deleted(&self, row: usize) -> bool {
        self.bits.get(row / 8).is_some_and(|b| b & (1 << (row % 8)) != 0)
    }

    /// Marks `row`; true when it was live.
    pub fn delete(&mut self, row: usize) -> bool {
        assert!(row < self.rows, "row {row} out of {} rows", self.rows);
        let was = self.is_deleted(row);
        self.bits[row / 8] |= 1 << (row % 8);
        if !was {
            self.count += 1;
        }
        !was
    }

    /// Deleted rows.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }
}
