//! [`ItemReader`]: an item file read in byte chunks (the object is fetched by ranges), its memory
//! bounded by the chunk and [`MAX_LINE_BYTES`], not the file; and [`ReadCursor`], where reading
//! stands, which a job checkpoint keeps to resume exactly there.

use serde::{Deserialize, Serialize};

use super::MAX_LINE_BYTES;
use super::items::{Item, ItemError, Record, parse_record, too_long};
use super::params::ItemFormat;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where reading an item file stands: serializable, kept in a job checkpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReadCursor {
    /// Bytes of the object consumed: the next read starts here.
    pub offset: u64,
    /// Seq of the next item.
    pub seq: u64,
    /// 1-based line where the next record starts (0, as in `Default`, reads as 1).
    pub line: u64,
    /// The CSV header once read (empty when the header was invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Vec<String>>,
}

/// Streams items out of an item file fed in byte chunks (the object is read by ranges; memory is
/// bounded by the chunk and [`MAX_LINE_BYTES`], not the file).
///
/// A malformed record yields an [`ItemError`], takes no seq, and is passed over: reading goes on
/// with the next record. A record over [`MAX_LINE_BYTES`] is reported as soon as the bytes pushed
/// pass the limit, then its rest is dropped as it arrives; until its end is seen, [`ItemReader::cursor`]
/// stays at its start (a resume from there reports it again).
#[derive(Debug)]
pub struct ItemReader {
    format: ItemFormat,
    /// Bytes pushed and not yet consumed (from `head`) or dropped.
    buf: Vec<u8>,
    /// Absolute offset in the object of `buf[0]`.
    base: u64,
    /// Index in `buf` where the current record starts (meaningless while `skipping`).
    head: usize,
    /// Index in `buf` up to which the current record was searched for its end.
    scan: usize,
    /// Absolute offset where the current record starts.
    start: u64,
    seq: u64,
    line: u64,
    header: Option<Vec<String>>,
    /// CSV: whether the record scanned so far holds an odd number of quotes (so a newline is data).
    quoted: bool,
    /// CSV: newlines inside quotes in the record scanned so far.
    newlines: u64,
    /// Dropping the rest of an over-long record that was already reported.
    skipping: bool,
    /// Whether a BOM at offset 0 was looked for.
    bom_done: bool,
    /// `finish` has taken the last record.
    ended: bool,
}

impl ItemReader {
    /// A reader starting at `from` (`ReadCursor::default()` for the start of the object).
    pub fn new(format: ItemFormat, from: ReadCursor) -> ItemReader {
        ItemReader {
            format,
            buf: Vec::new(),
            base: from.offset,
            head: 0,
            scan: 0,
            start: from.offset,
            seq: from.seq,
            line: from.line.max(1),
            header: from.header,
            quoted: false,
            newlines: 0,
            skipping: false,
            bom_done: from.offset != 0,
            ended: false,
        }
    }

    /// Appends the next bytes of the object (those right after what was pushed before).
    pub fn push(&mut self, chunk: &[u8]) {
        // Drop what is consumed first, so the buffer holds only the record being read.
        let keep = if self.skipping { self.scan } else { self.head };
        if keep > 0 {
            self.buf.drain(..keep);
            self.base += keep as u64;
            self.head -= keep.min(self.head);
            self.scan -= keep;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete item, if the bytes pushed so far hold one. None: push more (or call `finish`).
    pub fn next_item(&mut self) -> Option<Result<Item, ItemError>> {
        loop {
            if self.ended || !self.skip_bom(false) {
                return None;
            }
            let Some(newline) = self.scan_end() else {
                if self.skipping {
                    // Already reported: drop it as it comes.
                    self.buf.drain(..self.scan);
                    self.base += self.scan as u64;
                    self.scan = 0;
                    self.head = 0;
                } else if self.base + self.scan as u64 - self.start > MAX_LINE_BYTES {
                    self.skipping = true;
                    return Some(Err(self.error(too_long())));
                }
                return None;
            };
            let len = self.base + newline as u64 - self.start;
            let record = if self.skipping {
                Record::Blank
            } else if len > MAX_LINE_BYTES {
                Record::Invalid(too_long())
            } else {
                parse_record(self.format, &self.buf[self.head..newline], &mut self.header)
            };
            let line = self.line;
            self.consume(newline + 1);
            if let Some(r) = self.produce(record, line) {
                return Some(r);
            }
        }
    }

    /// At the end of the object: the last record when it had no trailing newline, then None.
    /// (Records still complete in the buffer come first, so looping on `finish` alone reads them all.)
    pub fn finish(&mut self) -> Option<Result<Item, ItemError>> {
        if let Some(r) = self.next_item() {
            return Some(r);
        }
        if self.ended {
            return None;
        }
        self.skip_bom(true);
        self.ended = true;
        let end = self.buf.len();
        if self.skipping {
            self.consume(end);
            return None;
        }
        if self.head == end {
            return None;
        }
        let record = if self.format == ItemFormat::Csv && self.quoted {
            Record::Invalid("a quoted field is not closed at the end of the file".into())
        } else {
            parse_record(self.format, &self.buf[self.head..end], &mut self.header)
        };
        let line = self.line;
        self.consume(end);
        self.produce(record, line)
    }

    /// The position after the last item returned (what a checkpoint stores to resume exactly there).
    pub fn cursor(&self) -> ReadCursor {
        ReadCursor { offset: self.start, seq: self.seq, line: self.line, header: self.header.clone() }
    }

    /// Passes a UTF-8 BOM at offset 0. False while the bytes pushed may still be the start of one.
    fn skip_bom(&mut self, at_end: bool) -> bool {
        if self.bom_done {
            return true;
        }
        let rest = &self.buf[self.head..];
        if rest.starts_with(UTF8_BOM) {
            self.head += UTF8_BOM.len();
            self.scan = self.head;
            self.start += UTF8_BOM.len() as u64;
        } else if UTF8_BOM.starts_with(rest) && !at_end {
            return false;
        }
        self.bom_done = true;
        true
    }

    /// The index of the newline that ends the current record, if pushed yet.
    fn scan_end(&mut self) -> Option<usize> {
        let from = self.scan;
        match self.format {
            ItemFormat::Jsonl => {
                let found = self.buf[from..].iter().position(|&b| b == b'\n').map(|i| from + i);
                self.scan = found.unwrap_or(self.buf.len());
                found
            }
            ItemFormat::Csv => {
                for (i, &b) in self.buf.iter().enumerate().skip(from) {
                    match b {
                        b'"' => self.quoted = !self.quoted,
                        b'\n' if self.quoted => self.newlines += 1,
                        b'\n' => {
                            self.scan = i;
                            return Some(i);
                        }
                        _ => {}
                    }
                }
                self.scan = self.buf.len();
                None
            }
        }
    }

    /// Marks `buf[..end]` consumed: the next record starts after it.
    fn consume(&mut self, end: usize) {
        self.head = end;
        self.scan = end;
        self.start = self.base + end as u64;
        self.line += 1 + self.newlines;
        self.newlines = 0;
        self.quoted = false;
        self.skipping = false;
    }

    /// What the caller gets for a record that started at `line`.
    fn produce(&mut self, record: Record, line: u64) -> Option<Result<Item, ItemError>> {
        match record {
            Record::Blank | Record::Header => None,
            Record::Invalid(message) => Some(Err(ItemError { line, message })),
            Record::Value(value) => {
                let item = Item::new(self.seq, value);
                self.seq += 1;
                Some(Ok(item))
            }
        }
    }

    fn error(&self, message: String) -> ItemError {
        ItemError { line: self.line, message }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    /// Every item (or error) of `bytes` fed in chunks of `chunk` bytes, then `finish`.
    pub(in crate::batch) fn read_all(format: ItemFormat, from: ReadCursor, bytes: &[u8], chunk: usize) -> Vec<Result<Item, ItemError>> {
        let mut reader = ItemReader::new(format, from);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            reader.push(piece);
            while let Some(r) = reader.next_item() {
                out.push(r);
            }
        }
        while let Some(r) = reader.finish() {
            out.push(r);
        }
        out
    }

    pub(in crate::batch) fn ok_items(results: Vec<Result<Item, ItemError>>) -> Vec<Item> {
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    const JSONL: &str = "{\"id\":\"a\",\"n\":1}\n\n  \n[1,2]\n\"text\"\r\n{\"id\":7}\n42";

    #[test]
    fn jsonl_byte_by_byte_is_the_same_as_whole() {
        let whole = ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), JSONL.as_bytes(), usize::MAX));
        assert_eq!(
            whole,
            vec![
                Item { seq: 0, id: Some("a".into()), value: json!({"id": "a", "n": 1}) },
                Item { seq: 1, id: None, value: json!([1, 2]) },
                Item { seq: 2, id: None, value: json!("text") },
                Item { seq: 3, id: Some("7".into()), value: json!({"id": 7}) },
                Item { seq: 4, id: None, value: json!(42) },
            ]
        );
        for chunk in [1, 2, 3, 7] {
            assert_eq!(ok_items(read_all(ItemFormat::Jsonl, ReadCursor::default(), JSONL.as_bytes(), chunk)), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn jsonl_bom_crlf_and_last_line_via_finish() {
        let bytes = b"\xEF\xBB\xBF{\"a\":1}\r\n{\"a\":2}";
        for chunk in [1, 2, 100] {
            let mut reader = ItemReader::new(ItemFormat::Jsonl, ReadCursor::default());
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(piece);
                while let Some(r) = reader.next_item() {
                    got.push(r.unwrap().value);
                }
            }
            assert_eq!(got, vec![json!({"a": 1})], "the last line waits for finish (chunk {chunk})");
            assert_eq!(reader.cursor(), ReadCursor { offset: 12, seq: 1, line: 2, header: None });
            assert_eq!(reader.finish().unwrap().unwrap(), Item { seq: 1, id: None, value: json!({"a": 2}) });
            assert_eq!(reader.finish(), None);
            assert_eq!(reader.next_item(), None);
            assert_eq!(reader.cursor().offset, bytes.len() as u64);
        }
        // A BOM anywhere but offset 0 is data, and makes bad JSON.
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), b"1\n\xEF\xBB\xBF2\n", 1);
        assert_eq!(got[0], Ok(Item { seq: 0, id: None, value: json!(1) }));
        assert_eq!(got[1].as_ref().unwrap_err().line, 2);
        // A file that is only part of a BOM is not silently dropped.
        assert_eq!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"\xEF\xBB", 1)[0].as_ref().unwrap_err().line, 1);
        assert!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"\xEF\xBB\xBF", 1).is_empty());
        assert!(read_all(ItemFormat::Jsonl, ReadCursor::default(), b"", 1).is_empty());
    }

    #[test]
    fn a_line_over_a_mebibyte_is_refused_as_soon_as_it_passes_the_limit() {
        let limit = MAX_LINE_BYTES as usize;
        let mut reader = ItemReader::new(ItemFormat::Jsonl, ReadCursor::default());
        reader.push(b"1\n");
        assert_eq!(reader.next_item(), Some(Ok(Item { seq: 0, id: None, value: json!(1) })));
        reader.push(&vec![b' '; limit]);
        assert_eq!(reader.next_item(), None, "exactly the limit is still fine");
        reader.push(b"x");
        let err = reader.next_item().unwrap().unwrap_err();
        assert_eq!(err, ItemError { line: 2, message: "line longer than 1048576 bytes".into() });
        assert_eq!(reader.cursor().offset, 2, "until its end is seen, the cursor stays at its start");
        // The rest of it is dropped as it comes: memory stays bounded.
        for _ in 0..3 {
            reader.push(&vec![b'y'; 1 << 20]);
            assert_eq!(reader.next_item(), None);
            assert!(reader.buf.len() <= 1 << 20);
        }
        reader.push(b"\n2\n");
        assert_eq!(reader.next_item(), Some(Ok(Item { seq: 1, id: None, value: json!(2) })));
        assert_eq!(reader.cursor().line, 4);
        assert_eq!(reader.cursor().offset, 2 + limit as u64 + 1 + 3 * (1 << 20) + 1 + 2);
        assert_eq!(reader.finish(), None);

        // Pushed whole with its newline: the same error, and then the next line.
        let mut bytes = vec![b'z'; limit + 1];
        bytes.extend_from_slice(b"\n3");
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), &bytes, usize::MAX);
        assert_eq!(got, vec![Err(ItemError { line: 1, message: too_long() }), Ok(Item { seq: 0, id: None, value: json!(3) })]);
        // At the end of the file without a newline: reported once.
        let got = read_all(ItemFormat::Jsonl, ReadCursor::default(), &bytes[..limit + 1], 1 << 16);
        assert_eq!(got, vec![Err(ItemError { line: 1, message: too_long() })]);
    }

    pub(in crate::batch) const CSV: &str = "id,name,note\r\n1,Ann,\"said \"\"hi\"\"\"\n\n2,Bob,\"two\nlines\"\n3,\"Cy, Jr\",\n";

    /// Reads `bytes` up to `k` items, resumes from the cursor with a fresh reader, and checks the
    /// two halves make exactly the whole.
    fn check_resume(format: ItemFormat, bytes: &[u8]) {
        let whole = read_all(format, ReadCursor::default(), bytes, usize::MAX);
        let items = whole.iter().filter(|r| r.is_ok()).count();
        assert!(items >= 3);
        for k in 0..=items {
            for chunk in [1, 3, usize::MAX] {
                let mut reader = ItemReader::new(format, ReadCursor::default());
                let mut first = Vec::new();
                let mut fed = 0;
                'outer: for piece in bytes.chunks(chunk.min(bytes.len())) {
                    reader.push(piece);
                    fed += piece.len();
                    while first.iter().filter(|r: &&Result<Item, ItemError>| r.is_ok()).count() < k {
                        match reader.next_item() {
                            Some(r) => first.push(r),
                            None => continue 'outer,
                        }
                    }
                    break;
                }
                if first.iter().filter(|r| r.is_ok()).count() < k {
                    while let Some(r) = reader.finish() {
                        first.push(r);
                    }
                }
                let cursor = reader.cursor();
                // A checkpoint is stored as JSON.
                let cursor: ReadCursor = serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap();
                assert!(cursor.offset as usize <= fed.max(bytes.len()));
                let rest = read_all(format, cursor.clone(), &bytes[cursor.offset as usize..], chunk);
                let mut both = first.clone();
                both.extend(rest);
                assert_eq!(both, whole, "{format:?} k {k} chunk {chunk} cursor {cursor:?}");
            }
        }
    }

    #[test]
    fn resume_from_a_cursor_reads_exactly_the_rest() {
        check_resume(ItemFormat::Jsonl, JSONL.as_bytes());
        check_resume(ItemFormat::Jsonl, b"\xEF\xBB\xBF{\"id\":1}\n\nnot json\n{\"id\":2}\r\n3\n\n");
        check_resume(ItemFormat::Csv, CSV.as_bytes());
        check_resume(ItemFormat::Csv, b"\xEF\xBB\xBF\n\nk,v\n1,2\n1,2,3\n\"a\"\"\nb\",c\n\nx,y");
    }
}
