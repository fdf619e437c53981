//! A minimal reader of kernel BTF: "byte offset of member M of struct S".
//!
//! Why our own: Rust eBPF gets no CO-RE relocations, so kernel struct offsets
//! (task_struct.exit_code, .tgid, ...) are looked up here at load time and passed to
//! the probes as globals. aya 0.14 parses BTF but does not expose type lookup
//! publicly, and btf-rs is LGPL. Only what that one question needs is parsed.
use std::path::Path;

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
const TYPE_HEADER: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Anonymous struct/union nesting followed when looking for a member.
const MAX_NESTING: usize = 8;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF or not little-endian host order (magic {0:#06x})")]
    BadMagic(u16),
    #[error("BTF truncated or malformed: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("struct {0} not found")]
    NoStruct(String),
    #[error("member {member} not found in struct {strukt}")]
    NoMember { strukt: String, member: String },
    #[error("member {member} of struct {strukt} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    /// Byte offset of the btf_type record inside the type section.
    pos: usize,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    name_off: u32,
    size_or_type: u32,
}

/// Parsed BTF: the raw bytes plus an index of type records (id = index + 1).
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    index: Vec<TypeEntry>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    /// Loads the running kernel's BTF.
    pub fn from_sys() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let bad = BtfError::Malformed;
        let magic = u16_at(data, 0).ok_or(bad("short header"))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(data, 4).ok_or(bad("short header"))? as usize;
        if hdr_len < HEADER_MIN {
            return Err(bad("header too short"));
        }
        let field = |off| {
            u32_at(data, off)
                .map(|v| v as usize)
                .ok_or(bad("short header"))
        };
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(bad("offset overflow"))?;
            let end = start.checked_add(len).ok_or(bad("length overflow"))?;
            data.get(start..end)
                .map(<[u8]>::to_vec)
                .ok_or(bad("section out of bounds"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        let mut index = Vec::new();
        let mut pos = 0usize;
        while pos < types.len() {
            let name_off = u32_at(&types, pos).ok_or(bad("type header"))?;
            let info = u32_at(&types, pos + 4).ok_or(bad("type header"))?;
            let size_or_type = u32_at(&types, pos + 8).ok_or(bad("type header"))?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => {
                    return Err(BtfError::UnknownKind {
                        kind,
                        id: index.len() as u32 + 1,
                    })
                }
            };
            index.push(TypeEntry {
                pos,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                name_off,
                size_or_type,
            });
            pos += TYPE_HEADER + extra;
        }
        if pos != types.len() {
            return Err(bad("type section ends inside a type"));
        }
        Ok(Btf {
            types,
            strings,
            index,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn entry(&self, id: u32) -> Option<&TypeEntry> {
        self.index.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&TypeEntry> {
        for _ in 0..32 {
            let e = self.entry(id)?;
            match e.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = e.size_or_type
                }
                _ => return Some(e),
            }
        }
        None
    }

    /// Byte offset of `member` in struct (or union) `strukt`, looking into anonymous
    /// struct/union members as C does.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let s = self
            .index
            .iter()
            .find(|e| {
                (e.kind == KIND_STRUCT || e.kind == KIND_UNION)
                    && e.vlen > 0
                    && self.name(e.name_off) == strukt.as_bytes()
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        match self.find_member(s, member.as_bytes(), 0)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield {
                strukt: strukt.to_string(),
                member: member.to_string(),
            }),
            None => Err(BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            }),
        }
    }

    /// Bit offset of `member` inside `s`, or None.
    fn find_member(
        &self,
        s: &TypeEntry,
        member: &[u8],
        depth: usize,
    ) -> Result<Option<u32>, BtfError> {
        if depth > MAX_NESTING {
            return Ok(None);
        }
        for i in 0..s.vlen {
            let m = s.pos + TYPE_HEADER + 12 * i;
            let bad = || BtfError::Malformed("member out of bounds");
            let name_off = u32_at(&self.types, m).ok_or_else(bad)?;
            let type_id = u32_at(&self.types, m + 4).ok_or_else(bad)?;
            let raw_off = u32_at(&self.types, m + 8).ok_or_else(bad)?;
            // With kind_flag the high 8 bits are a bitfield size.
            let bit_off = if s.kind_flag {
                raw_off & 0x00ff_ffff
            } else {
                raw_off
            };
            if name_off != 0 {
                if self.name(name_off) == member {
                    return Ok(Some(bit_off));
                }
                continue;
            }
            if let Some(inner) = self.resolve(type_id) {
                if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                    if let Some(o) = self.find_member(inner, member, depth + 1)? {
                        return Ok(Some(bit_off + o));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// task_struct offsets from BTF; u32::MAX where unknown (the probes then degrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub exit_code: u32,
    pub pid: u32,
    pub tgid: u32,
    pub real_parent: u32,
    /// `struct pt_regs` di, si, dx: the first three syscall arguments (x86_64).
    pub regs_args: [u32; 3],
    /// `struct pt_regs` orig_ax: the syscall number.
    pub regs_syscall: u32,
}

/// `struct pt_regs` di, si, dx on x86_64 (its layout is the ptrace ABI).
const X86_64_REGS_ARGS: [u32; 3] = [112, 104, 96];
/// `struct pt_regs` orig_ax on x86_64.
const X86_64_REGS_ORIG_AX: u32 = 120;

impl TaskOffsets {
    pub fn from_kernel() -> TaskOffsets {
        let unknown = TaskOffsets {
            exit_code: u32::MAX,
            pid: u32::MAX,
            tgid: u32::MAX,
            real_parent: u32::MAX,
            regs_args: X86_64_REGS_ARGS,
            regs_syscall: X86_64_REGS_ORIG_AX,
        };
        let btf = match Btf::from_sys() {
            Ok(b) => b,
            Err(e) => {
                log::warn!("kernel BTF unavailable ({e}): exit codes, forks and ppids degrade");
                return unknown;
            }
        };
        let get = |m: &str| match btf.member_offset("task_struct", m) {
            Ok(o) => o,
            Err(e) => {
                log::warn!("BTF: {e}");
                u32::MAX
            }
        };
        let mut regs_args = X86_64_REGS_ARGS;
        for (slot, reg) in regs_args.iter_mut().zip(["di", "si", "dx"]) {
            if let Ok(o) = btf.member_offset("pt_regs", reg) {
                *slot = o;
            }
        }
        TaskOffsets {
            exit_code: get("exit_code"),
            pid: get("pid"),
            tgid: get("tgid"),
            real_parent: get("real_parent"),
            regs_args,
            regs_syscall: btf
                .member_offset("pt_regs", "orig_ax")
                .unwrap_or(X86_64_REGS_ORIG_AX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: strings "\0int\0s\0a\0b\0c\0u_t" and types
    /// 1 int(4), 2 union { int b @0 }, 3 struct s { int a @0; union @64; int c @96 },
    /// 4 typedef u_t = 2 (unused member type path through typedef is tested via s2),
    /// 5 struct s2 { u_t @32 }.
    fn crafted() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0u_t\0s2\0".to_vec();
        let off = |name: &str| {
            let pat = [b"\0", name.as_bytes(), b"\0"].concat();
            strings.windows(pat.len()).position(|w| w == pat).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int, size 4, encoding word
        push(&[off("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous union, 1 member b @0
        push(&[0, KIND_UNION << 24 | 1, 4, off("b"), 1, 0]);
        // 3: struct s, 3 members
        push(&[off("s"), KIND_STRUCT << 24 | 3, 16]);
        push(&[off("a"), 1, 0, 0, 2, 64, off("c"), 1, 96]);
        // 4: typedef u_t -> 2
        push(&[off("u_t"), KIND_TYPEDEF << 24, 2]);
        // 5: struct s2 { u_t (anonymous) @32 }, kind_flag set (bitfield encoding)
        push(&[off("s2"), 1 << 31 | KIND_STRUCT << 24 | 1, 8, 0, 4, 32]);

        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.push(1); // version
        blob.push(0); // flags
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn crafted_blob_offsets() {
        let btf = Btf::parse(&crafted()).expect("parse");
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 12);
        assert_eq!(btf.member_offset("s2", "b").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("s", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let good = crafted();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        assert!(matches!(Btf::parse(b"xxxx"), Err(BtfError::BadMagic(_))));
        let mut bad = good.clone();
        bad[24 + 7] = 0x7f; // kind 31 in the first type's info
        assert!(Btf::parse(&bad).is_err());
    }

    #[test]
    fn vmlinux_task_struct() {
        let btf = Btf::from_sys().expect("/sys/kernel/btf/vmlinux must be readable");
        let exit_code = btf.member_offset("task_struct", "exit_code").unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let parent = btf.member_offset("task_struct", "real_parent").unwrap();
        assert_eq!(tgid, pid + 4, "pid and tgid are adjacent pid_t fields");
        assert!(exit_code > 0 && parent > tgid);
        // A member inside an anonymous union: sk_buff.len is direct, but
        // sock_common.skc_daddr sits in an anonymous struct/union.
        assert!(btf.member_offset("sock_common", "skc_daddr").is_ok());
    }
}
