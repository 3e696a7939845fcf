//! A byte-level zip writer for archives that the `zip` crate's writer refuses to produce:
//! duplicate names, headers that disagree, lying sizes, encryption flags, unknown compression
//! methods and entries that share data.

/// Unix `version made by`: the high byte 3 marks the external attributes as a Unix mode.
const MADE_BY_UNIX: u16 = (3 << 8) | 20;
/// DOS date for 1980-01-01, the earliest a zip can store.
const DOS_DATE_1980: u16 = (1 << 5) | 1;

/// One entry of a hand-built archive. Sizes and the CRC are written as given, so a test can
/// make them lie.
#[derive(Clone, Debug)]
pub(super) struct RawEntry {
    pub(super) name: Vec<u8>,
    /// Name in the local header, when it should differ from the central directory's.
    pub(super) local_name: Option<Vec<u8>>,
    /// The entry's bytes as stored in the archive (already compressed for method 8).
    pub(super) data: Vec<u8>,
    pub(super) method: u16,
    pub(super) flags: u16,
    pub(super) crc32: u32,
    pub(super) uncompressed_size: u32,
    /// Unix mode, including the type bits.
    pub(super) mode: u32,
    /// Points the central record at another entry's local header instead of writing one.
    pub(super) shares_local_header_of: Option<usize>,
}

impl RawEntry {
    /// Returns a stored regular file with a correct CRC and sizes.
    pub(super) fn stored(name: &str, contents: &[u8]) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            local_name: None,
            data: contents.to_vec(),
            method: 0,
            flags: 0,
            crc32: crc32(contents),
            uncompressed_size: u32::try_from(contents.len()).expect("test data fits in u32"),
            mode: 0o100644,
            shares_local_header_of: None,
        }
    }

    /// Returns a deflated entry from an already compressed `stream`, declaring
    /// `uncompressed_size`.
    pub(super) fn deflated(name: &str, stream: Vec<u8>, uncompressed_size: u32, crc: u32) -> Self {
        Self {
            method: 8,
            crc32: crc,
            uncompressed_size,
            data: stream,
            ..Self::stored(name, b"")
        }
    }
}

/// Builds an archive from `entries`: local headers and data in order, then the central
/// directory and its end record.
pub(super) fn build(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::with_capacity(entries.len());

    for entry in entries {
        if let Some(other) = entry.shares_local_header_of {
            offsets.push(offsets[other]);
            continue;
        }
        offsets.push(u32::try_from(out.len()).expect("test archive fits in u32"));
        let name = entry.local_name.as_ref().unwrap_or(&entry.name);
        put_u32(&mut out, 0x0403_4b50);
        put_u16(&mut out, 20);
        put_u16(&mut out, entry.flags);
        put_u16(&mut out, entry.method);
        put_u16(&mut out, 0);
        put_u16(&mut out, DOS_DATE_1980);
        put_u32(&mut out, entry.crc32);
        put_u32(&mut out, data_len(entry));
        put_u32(&mut out, entry.uncompressed_size);
        put_u16(
            &mut out,
            u16::try_from(name.len()).expect("name fits in u16"),
        );
        put_u16(&mut out, 0);
        out.extend_from_slice(name);
        out.extend_from_slice(&entry.data);
    }

    let directory_start = u32::try_from(out.len()).expect("test archive fits in u32");
    for (entry, offset) in entries.iter().zip(&offsets) {
        put_u32(&mut out, 0x0201_4b50);
        put_u16(&mut out, MADE_BY_UNIX);
        put_u16(&mut out, 20);
        put_u16(&mut out, entry.flags);
        put_u16(&mut out, entry.method);
        put_u16(&mut out, 0);
        put_u16(&mut out, DOS_DATE_1980);
        put_u32(&mut out, entry.crc32);
        put_u32(&mut out, data_len(entry));
        put_u32(&mut out, entry.uncompressed_size);
        put_u16(
            &mut out,
            u16::try_from(entry.name.len()).expect("name fits in u16"),
        );
        put_u16(&mut out, 0);
        put_u16(&mut out, 0);
        put_u16(&mut out, 0);
        put_u16(&mut out, 0);
        put_u32(&mut out, entry.mode << 16);
        put_u32(&mut out, *offset);
        out.extend_from_slice(&entry.name);
    }
    let directory_len = u32::try_from(out.len()).expect("fits") - directory_start;

    let count = u16::try_from(entries.len()).expect("entry count fits in u16");
    put_u32(&mut out, 0x0605_4b50);
    put_u16(&mut out, 0);
    put_u16(&mut out, 0);
    put_u16(&mut out, count);
    put_u16(&mut out, count);
    put_u32(&mut out, directory_len);
    put_u32(&mut out, directory_start);
    put_u16(&mut out, 0);
    out
}

fn data_len(entry: &RawEntry) -> u32 {
    u32::try_from(entry.data.len()).expect("test data fits in u32")
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// CRC-32 (IEEE), bit by bit: slow, and only used on small test data.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Returns a raw deflate stream that inflates to `1 + 258 * repeats` zero bytes.
///
/// The stream is one block with the fixed Huffman code: a literal zero, then `repeats` copies of
/// the longest match (length 258, distance 1), 13 bits each: a ratio of about 159:1, below the
/// default `max_ratio`. It lets a test describe gigabytes in megabytes without compressing them.
pub(super) fn deflate_zeros(repeats: usize) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.put(1, 1); // BFINAL: last block
    bits.put(1, 2); // BTYPE 01: fixed Huffman code
    bits.put_code(0x30, 8); // literal 0
    for _ in 0..repeats {
        bits.put_code(0xC5, 8); // length symbol 285: 258 bytes, no extra bits
        bits.put_code(0, 5); // distance symbol 0: distance 1
    }
    bits.put_code(0, 7); // symbol 256: end of block
    bits.finish()
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    /// Appends the low `count` bits of `value`, least significant first, as deflate packs
    /// header fields.
    fn put(&mut self, value: u32, count: u32) {
        self.pending |= u64::from(value) << self.pending_bits;
        self.pending_bits += count;
        while self.pending_bits >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.pending_bits -= 8;
        }
    }

    /// Appends a Huffman code, which deflate packs most significant bit first.
    fn put_code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.pending_bits > 0 {
            self.out.push(self.pending as u8);
        }
        self.out
    }
}
