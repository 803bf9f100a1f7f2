//! Test support for the BTF modules: a builder for little-endian BTF blobs, two sample blobs,
//! a reproducible garbler, and the running kernel's BTF when it can be read.

use super::{
    Btf, VMLINUX_BTF_PATH,
    parse::{
        HEADER_LEN, KIND_ARRAY, KIND_CONST, KIND_DATASEC, KIND_DECL_TAG, KIND_ENUM, KIND_ENUM64,
        KIND_FLOAT, KIND_FUNC, KIND_FUNC_PROTO, KIND_FWD, KIND_INT, KIND_PTR, KIND_RESTRICT,
        KIND_STRUCT, KIND_TYPE_TAG, KIND_TYPEDEF, KIND_UNION, KIND_VAR, KIND_VOLATILE, MAGIC,
        VERSION,
    },
};

/// Builds little-endian BTF blobs type by type.
pub(super) struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    pub(super) fn new() -> Builder {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    pub(super) fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    pub(super) fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Appends a record with `data` as its kind-specific trailing words; returns its id.
    pub(super) fn raw(
        &mut self,
        kind: u8,
        flag: bool,
        vlen: u16,
        name: &str,
        size_or_type: u32,
        data: &[u32],
    ) -> u32 {
        let name_off = self.name(name);
        let info = u32::from(flag) << 31 | u32::from(kind) << 24 | u32::from(vlen);
        self.words(&[name_off, info, size_or_type]);
        self.words(data);
        self.next_id += 1;
        self.next_id - 1
    }

    pub(super) fn int(&mut self, name: &str, size: u32) -> u32 {
        self.raw(KIND_INT, false, 0, name, size, &[size * 8])
    }

    /// A STRUCT or UNION; members are (name, type id, offset word).
    pub(super) fn composite(
        &mut self,
        kind: u8,
        flag: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let mut data = Vec::new();
        for &(n, ty, off) in members {
            data.extend([self.name(n), ty, off]);
        }
        self.raw(kind, flag, members.len() as u16, name, size, &data)
    }

    pub(super) fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(KIND_STRUCT, false, name, size, members)
    }

    pub(super) fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend([VERSION, 0]);
        let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
        for w in [HEADER_LEN as u32, 0, tl, tl, sl] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// `struct outer { int a; struct { long b; long c; }; }`.
pub(super) fn outer() -> Builder {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let long = b.int("long", 8);
    let anon = b.strukt("", 16, &[("b", long, 0), ("c", long, 64)]);
    b.strukt("outer", 24, &[("a", int, 0), ("", anon, 64)]);
    b
}

/// A blob with one record of every kind (so a wrong trailing size desyncs the rest), and
/// `task_struct` / `mm_struct` shaped like a modern kernel's.
pub(super) fn mini_kernel() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let ulong = b.int("unsigned long", 8);
    let u64_ = b.raw(KIND_TYPEDEF, false, 0, "u64", ulong, &[]);
    let pid_t = b.raw(KIND_TYPEDEF, false, 0, "pid_t", int, &[]);
    b.raw(KIND_ARRAY, false, 0, "", 0, &[int, int, 16]);
    b.raw(KIND_ENUM, false, 2, "e", 4, &[0, 1, 0, 2]);
    b.raw(KIND_FWD, false, 0, "task_struct", 0, &[]);
    b.raw(KIND_FWD, false, 0, "mm_struct", 0, &[]);
    let proto = b.raw(KIND_FUNC_PROTO, false, 3, "", int, &[0, int, 0, int, 0, 0]);
    b.raw(KIND_FUNC, false, 0, "f", proto, &[]);
    let var = b.raw(KIND_VAR, false, 0, "v", int, &[1]);
    b.raw(KIND_DATASEC, false, 2, ".data", 8, &[var, 0, 4, var, 4, 4]);
    b.raw(KIND_FLOAT, false, 0, "double", 8, &[]);
    b.raw(KIND_DECL_TAG, false, 0, "tag", int, &[u32::MAX]);
    let tagged = b.raw(KIND_TYPE_TAG, false, 0, "user", int, &[]);
    b.raw(KIND_ENUM64, false, 2, "e64", 8, &[0, 1, 0, 0, 2, 1]);
    b.raw(KIND_RESTRICT, false, 0, "", tagged, &[]);
    // An empty definition must not be preferred over the real one below.
    b.strukt("task_struct", 0, &[]);
    let mm_inner = b.strukt(
        "",
        64,
        &[("arg_start", ulong, 128), ("arg_end", ulong, 192)],
    );
    let mm = b.strukt(
        "mm_struct",
        72,
        &[("", mm_inner, 0), ("cpu_bitmap", ulong, 512)],
    );
    let mm_ptr = b.raw(KIND_PTR, false, 0, "", mm, &[]);
    let task_ptr = b.raw(KIND_PTR, false, 0, "", 0, &[]);
    let vol = b.raw(KIND_VOLATILE, false, 0, "", int, &[]);
    let times = b.composite(
        KIND_UNION,
        true,
        "",
        8,
        &[("start_boottime", u64_, 0), ("x", int, 0)],
    );
    let times = b.raw(KIND_CONST, false, 0, "", times, &[]);
    let times = b.raw(KIND_TYPEDEF, false, 0, "times_t", times, &[]);
    b.composite(
        KIND_STRUCT,
        true,
        "task_struct",
        128,
        &[
            ("__state", vol, 0),
            ("flag", int, 1 << 24 | 32),
            ("mm", mm_ptr, 64),
            ("pid", pid_t, 128),
            ("tgid", pid_t, 160),
            ("real_parent", task_ptr, 192),
            ("", times, 256),
        ],
    );
    b.build()
}

pub(super) fn err(raw: &[u8]) -> String {
    Btf::parse(raw).expect_err("parse should fail").to_string()
}

/// Rewrites the header's type_len (keeping the string section where it is).
pub(super) fn with_type_len(raw: &[u8], type_len: u32) -> Vec<u8> {
    let mut raw = raw.to_vec();
    raw[12..16].copy_from_slice(&type_len.to_le_bytes());
    raw
}

/// xorshift64*, so the garbling is reproducible without extra crates.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses and queries `raw`; only a panic would fail the test.
pub(super) fn exercise(raw: &[u8]) {
    if let Ok(btf) = Btf::parse(raw) {
        let _ = btf.kernel_offsets();
        let _ = btf.member_offset("outer", "c");
    }
}

pub(super) fn garble(rng: &mut Rng, good: &[u8], region: std::ops::Range<usize>) -> Vec<u8> {
    let mut raw = good.to_vec();
    for _ in 0..=rng.below(4) {
        let at = region.start + rng.below(region.len());
        raw[at] = match rng.below(4) {
            0 => 0,
            1 => 0xff,
            2 => raw[at] ^ (1 << rng.below(8)),
            _ => rng.next() as u8,
        };
    }
    if rng.below(8) == 0 {
        raw.truncate(rng.below(raw.len()));
    }
    raw
}

pub(super) fn vmlinux() -> Option<Vec<u8>> {
    match std::fs::read(VMLINUX_BTF_PATH) {
        Ok(raw) => Some(raw),
        Err(e) => {
            eprintln!("SKIPPED: cannot read {VMLINUX_BTF_PATH} ({e}); real-kernel BTF not tested");
            None
        }
    }
}
