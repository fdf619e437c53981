//! Code objects -> module / qualified name / file / line, read from the worker's memory
//! (/proc/PID/mem) and cached per (pid, address), bounded.
use super::error::ProfilerError;
use super::layout::CodeLayout;
use super::mem::ProcMem;
use crate::fast_hash::FastMap;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// Dotted module derived from the file (`numpy.linalg._linalg`, `demo_hot`).
    pub module: String,
    pub qualname: String,
    pub filename: String,
    pub firstlineno: u32,
    linetable: Vec<u8>,
    /// The 3.10 table format (and `units` are instruction indexes there too).
    legacy_310: bool,
}

impl CodeInfo {
    pub fn new(qualname: String, filename: String, firstlineno: u32, linetable: Vec<u8>) -> Self {
        CodeInfo {
            module: module_of(&filename),
            qualname,
            filename,
            firstlineno,
            linetable,
            legacy_310: false,
        }
    }

    /// `module.qualname`, the name frames are reported under.
    pub fn function(&self) -> String {
        if self.module.is_empty() {
            self.qualname.clone()
        } else {
            format!("{}.{}", self.module, self.qualname)
        }
    }

    /// Top-level package of the module: the "library".
    pub fn library(&self) -> &str {
        self.module.split('.').next().unwrap_or("")
    }

    /// Source line of the instruction `units` code units into the bytecode.
    pub fn line(&self, units: i64) -> u32 {
        if self.legacy_310 {
            return line_for_310(&self.linetable, self.firstlineno, units.max(0) as u64 * 2)
                .unwrap_or(self.firstlineno);
        }
        line_for(&self.linetable, self.firstlineno, units.max(0) as u64).unwrap_or(self.firstlineno)
    }
}

/// Dotted module name for a source file: the part after site-packages (or the
/// standard library's directory); a lone script gives its stem.
pub fn module_of(filename: &str) -> String {
    let f = filename.strip_suffix(".py").unwrap_or(filename);
    if f.starts_with('<') {
        return f.to_string();
    }
    let rel = ["/site-packages/", "/dist-packages/"]
        .iter()
        .find_map(|m| f.rsplit_once(m).map(|(_, r)| r))
        .or_else(|| {
            // .../lib/python3.N/<stdlib module>
            let i = f.find("/lib/python3.")?;
            let rest = &f[i + "/lib/python3.".len()..];
            rest.split_once('/').map(|(_, r)| r)
        })
        .unwrap_or_else(|| f.rsplit('/').next().unwrap_or(f));
    let m = rel.replace('/', ".");
    m.strip_suffix(".__init__").map(str::to_string).unwrap_or(m)
}

fn varint(t: &[u8], i: &mut usize) -> Option<u64> {
    let mut b = *t.get(*i)?;
    *i += 1;
    let mut v = u64::from(b & 63);
    let mut shift = 6;
    while b & 64 != 0 && shift < 64 {
        b = *t.get(*i)?;
        *i += 1;
        v |= u64::from(b & 63) << shift;
        shift += 6;
    }
    Some(v)
}

fn svarint(t: &[u8], i: &mut usize) -> Option<i64> {
    let v = varint(t, i)?;
    Some(if v & 1 != 0 {
        -((v >> 1) as i64)
    } else {
        (v >> 1) as i64
    })
}

/// The line of code unit `units` in a 3.11+ location table (Objects/locations.md).
pub fn line_for(table: &[u8], firstlineno: u32, units: u64) -> Option<u32> {
    let mut line = i64::from(firstlineno);
    let mut pc = 0u64;
    let mut i = 0usize;
    while i < table.len() {
        let b = table[i];
        i += 1;
        let code = (b >> 3) & 15;
        let len = u64::from(b & 7) + 1;
        let mut has_line = true;
        match code {
            15 => has_line = false,
            14 => {
                line += svarint(table, &mut i)?;
                for _ in 0..3 {
                    varint(table, &mut i)?;
                }
            }
            13 => line += svarint(table, &mut i)?,
            10..=12 => {
                line += i64::from(code - 10);
                i += 2;
            }
            _ => i += 1,
        }
        if units < pc + len {
            return has_line.then_some(line.max(0) as u32);
        }
        pc += len;
    }
    None
}

/// The line of bytecode byte `addr` in a 3.10 line table: (byte delta, signed line
/// delta) pairs, a line delta of -128 meaning no line.
pub fn line_for_310(table: &[u8], firstlineno: u32, addr: u64) -> Option<u32> {
    let mut line = i64::from(firstlineno);
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let has_line = delta != -128;
        if has_line {
            line += i64::from(delta);
        }
        if start <= addr && addr < end {
            return has_line.then_some(line.max(0) as u32);
        }
    }
    None
}

/// Reads CPython str objects (compact ASCII / compact UCS1-2-4).
pub fn read_str(mem: &ProcMem, l: &CodeLayout, addr: u64) -> Result<String, ProfilerError> {
    let length = mem.i64(addr + 16)?.clamp(0, 4096) as usize;
    let state = mem.u32(addr + 32)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact {
        return Ok("?".into());
    }
    if ascii {
        let b = mem.bytes(addr + l.ascii_size, length)?;
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return Ok("?".into()),
    };
    let b = mem.bytes(addr + l.compact_size, length * width)?;
    Ok(b.chunks(width)
        .map(|c| {
            let mut v = [0u8; 4];
            v[..width].copy_from_slice(c);
            char::from_u32(u32::from_le_bytes(v)).unwrap_or('?')
        })
        .collect())
}

/// Code objects of the sampled processes, resolved once each.
pub struct CodeCache {
    entries: FastMap<(u32, u64), Option<Arc<CodeInfo>>>,
    /// Type objects known to be (or not be) `code`, per process.
    code_types: FastMap<(u32, u64), bool>,
    capacity: usize,
    pub read_errors: u64,
}

impl CodeCache {
    pub fn new(capacity: usize) -> Self {
        CodeCache {
            entries: FastMap::default(),
            code_types: FastMap::default(),
            capacity,
            read_errors: 0,
        }
    }

    /// None when `addr` is no code object (3.13 shim frames) or unreadable.
    pub fn get(
        &mut self,
        mem: &ProcMem,
        pid: u32,
        l: &CodeLayout,
        addr: u64,
    ) -> Option<Arc<CodeInfo>> {
        if let Some(hit) = self.entries.get(&(pid, addr)) {
            return hit.clone();
        }
        if self.entries.len() >= self.capacity {
            // Simple bound: start over (code objects are few and re-read cheaply).
            self.entries.clear();
        }
        let got = match self.read(mem, pid, l, addr) {
            Ok(v) => v.map(Arc::new),
            Err(e) => {
                self.read_errors += 1;
                tracing::debug!(pid, error = %e, "code object unreadable");
                None
            }
        };
        self.entries.insert((pid, addr), got.clone());
        got
    }

    /// Drops what a process left behind.
    pub fn forget(&mut self, pid: u32) {
        self.entries.retain(|k, _| k.0 != pid);
        self.code_types.retain(|k, _| k.0 != pid);
    }

    fn read(
        &mut self,
        mem: &ProcMem,
        pid: u32,
        l: &CodeLayout,
        addr: u64,
    ) -> Result<Option<CodeInfo>, ProfilerError> {
        let ty = mem.u64(addr + 8)?;
        let is_code = match self.code_types.get(&(pid, ty)) {
            Some(v) => *v,
            None => {
                // PyTypeObject.tp_name follows the 24-byte PyVarObject head.
                let name_ptr = mem.u64(ty + 24)?;
                let name = mem.bytes(name_ptr, 5)?;
                let v = &name == b"code\0";
                self.code_types.insert((pid, ty), v);
                v
            }
        };
        if !is_code {
            return Ok(None);
        }
        let qualname = read_str(mem, l, mem.u64(addr + l.qualname)?)?;
        let filename = read_str(mem, l, mem.u64(addr + l.filename)?)?;
        let firstlineno = mem.u32(addr + l.firstlineno)?;
        let lt = mem.u64(addr + l.linetable)?;
        let lt_len = mem.i64(lt + 16)?.clamp(0, 1 << 20) as usize;
        let linetable = mem.bytes(lt + 32, lt_len)?;
        let mut info = CodeInfo::new(qualname, filename, firstlineno, linetable);
        info.legacy_310 = l.legacy_310;
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_from_files() {
        assert_eq!(
            module_of("/v/lib/python3.11/site-packages/numpy/linalg/_linalg.py"),
            "numpy.linalg._linalg"
        );
        assert_eq!(
            module_of("/v/lib/python3.11/site-packages/numpy/__init__.py"),
            "numpy"
        );
        assert_eq!(
            module_of("/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/events.py"),
            "asyncio.events"
        );
        assert_eq!(module_of("/work/demo/python/demo_hot.py"), "demo_hot");
        assert_eq!(
            module_of("<frozen importlib._bootstrap>"),
            "<frozen importlib._bootstrap>"
        );
    }

    #[test]
    fn location_table_lines() {
        // def f():       (line 1)
        //     a = 1      (line 2)
        //     return a   (line 3)
        // A table built by CPython 3.11 for this shape: RESUME (no column form, +0),
        // then one-line forms advancing by 1 each.
        let table = [
            0x80 | (13 << 3),
            0x00, // 1 unit, line +0 -> 1
            0x80 | (11 << 3) | 1,
            8,
            9, // 2 units, line +1 -> 2
            0x80 | (11 << 3) | 1,
            11,
            12,               // 2 units, line +1 -> 3
            0x80 | (15 << 3), // 1 unit, no location
        ];
        assert_eq!(line_for(&table, 1, 0), Some(1));
        assert_eq!(line_for(&table, 1, 1), Some(2));
        assert_eq!(line_for(&table, 1, 2), Some(2));
        assert_eq!(line_for(&table, 1, 3), Some(3));
        assert_eq!(line_for(&table, 1, 5), None);
        assert_eq!(line_for(&table, 1, 9), None);
        // 3.10: 6 bytes at line 1, 4 bytes without a line, 2 bytes at line 3.
        let t310 = [6u8, 0, 4, 0x80, 2, 2];
        assert_eq!(line_for_310(&t310, 1, 0), Some(1));
        assert_eq!(line_for_310(&t310, 1, 5), Some(1));
        assert_eq!(line_for_310(&t310, 1, 6), None);
        assert_eq!(line_for_310(&t310, 1, 10), Some(3));
        assert_eq!(line_for_310(&t310, 1, 12), None);
        // Long form with a negative delta.
        let long = [0x80 | (14 << 3), 0x03, 0x02, 0x01, 0x01];
        assert_eq!(line_for(&long, 10, 0), Some(9));
    }
}
