//! The guest image: a static ELF64 executable for x86-64, read for its
//! loadable segments and entry point only. Everything is checked here,
//! before a byte reaches guest memory.

use mirage_kvm_abi::{IMAGE_BASE, PAGE_SIZE};

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    pub vaddr: u64,
    pub memsz: u64,
    /// The bytes from the file; the rest up to `memsz` is zero.
    pub data: &'a [u8],
    pub write: bool,
    pub exec: bool,
}

impl Segment<'_> {
    pub fn end(&self) -> u64 {
        self.vaddr + self.memsz
    }
}

#[derive(Debug)]
pub(crate) struct Image<'a> {
    pub entry: u64,
    pub segments: Vec<Segment<'a>>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Read `bytes` as a guest image: ELF64, little-endian, x86-64, an
/// executable with neither interpreter nor dynamic section, its segments
/// page-aligned at or above [`IMAGE_BASE`], none both writable and
/// executable, no two on one page, and the entry point in an executable one.
pub(crate) fn parse(bytes: &[u8]) -> Result<Image<'_>, String> {
    let short = || "truncated ELF header".to_string();
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    if u16_at(bytes, 16).ok_or_else(short)? != 2 {
        return Err("not an executable (ET_EXEC)".into());
    }
    if u16_at(bytes, 18).ok_or_else(short)? != 62 {
        return Err("not an x86-64 image".into());
    }
    let entry = u64_at(bytes, 24).ok_or_else(short)?;
    let phoff = usize::try_from(u64_at(bytes, 32).ok_or_else(short)?).map_err(|_| short())?;
    let phentsize = usize::from(u16_at(bytes, 54).ok_or_else(short)?);
    let phnum = usize::from(u16_at(bytes, 56).ok_or_else(short)?);
    if phentsize < 56 {
        return Err("program headers too small".into());
    }
    let mut segments: Vec<Segment<'_>> = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(short)?)
            .ok_or_else(short)?;
        let ph = at
            .checked_add(56)
            .and_then(|end| bytes.get(at..end))
            .ok_or("program header past the end of the file")?;
        let kind = u32_at(ph, 0).ok_or_else(short)?;
        match kind {
            PT_INTERP | PT_DYNAMIC => {
                return Err("not a static image (interpreter or dynamic section)".into());
            }
            PT_LOAD => {}
            _ => continue,
        }
        let flags = u32_at(ph, 4).ok_or_else(short)?;
        let offset = u64_at(ph, 8).ok_or_else(short)?;
        let vaddr = u64_at(ph, 16).ok_or_else(short)?;
        let filesz = u64_at(ph, 32).ok_or_else(short)?;
        let memsz = u64_at(ph, 40).ok_or_else(short)?;
        let (write, exec) = (flags & PF_W != 0, flags & PF_X != 0);
        if write && exec {
            return Err(format!("segment at {vaddr:#x} is both writable and executable"));
        }
        if vaddr % PAGE_SIZE != 0 || vaddr < IMAGE_BASE {
            return Err(format!(
                "segment at {vaddr:#x}: not page-aligned at or above {IMAGE_BASE:#x}"
            ));
        }
        if filesz > memsz || vaddr.checked_add(memsz).is_none() {
            return Err(format!("segment at {vaddr:#x}: bad sizes"));
        }
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
            .ok_or_else(|| format!("segment at {vaddr:#x} past the end of the file"))?;
        let seg = Segment {
            vaddr,
            memsz,
            data,
            write,
            exec,
        };
        let page_end = |s: &Segment<'_>| s.end().div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if segments
            .iter()
            .any(|s| seg.vaddr < page_end(s) && s.vaddr < page_end(&seg))
        {
            return Err(format!("segment at {vaddr:#x} shares a page with another"));
        }
        segments.push(seg);
    }
    if !segments
        .iter()
        .any(|s| s.exec && (s.vaddr..s.end()).contains(&entry))
    {
        return Err(format!("entry point {entry:#x} is not in an executable segment"));
    }
    Ok(Image { entry, segments })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal image: one header, then `(flags, vaddr, data, memsz)`
    /// segments, each's data at its own offset.
    pub(crate) fn image(entry: u64, segs: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut data_at = 64 + 56 * segs.len();
        let mut tail = Vec::new();
        for &(flags, vaddr, data, memsz) in segs {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            ph[4..8].copy_from_slice(&flags.to_le_bytes());
            ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            b.extend_from_slice(&ph);
            tail.extend_from_slice(data);
            data_at += data.len();
        }
        b.extend_from_slice(&tail);
        b
    }

    #[test]
    fn reads_segments_and_entry() {
        let elf = image(
            0x10_0000,
            &[(5, 0x10_0000, &[0x90; 10], 10), (6, 0x10_1000, &[1, 2], 0x2000)],
        );
        let img = parse(&elf).unwrap();
        assert_eq!(img.entry, 0x10_0000);
        assert_eq!(img.segments.len(), 2);
        assert!(img.segments[0].exec && !img.segments[0].write);
        assert_eq!(img.segments[1].data, &[1, 2]);
        assert_eq!(img.segments[1].end(), 0x10_3000);
    }

    #[test]
    fn refuses_what_would_break_the_memory_map() {
        let cases: [(Vec<u8>, &str); 6] = [
            (
                image(0x10_0000, &[(7, 0x10_0000, &[0x90], 1)]),
                "writable and executable",
            ),
            (
                image(0x1000, &[(5, 0x1000, &[0x90], 1)]),
                "page-aligned at or above",
            ),
            (image(0x10_0010, &[(5, 0x10_0010, &[0x90], 1)]), "page-aligned"),
            (
                image(0x10_0000, &[(5, 0x10_0000, &[0x90], 1), (6, 0x10_0000, &[], 8)]),
                "shares a page",
            ),
            (
                image(0x10_1000, &[(5, 0x10_0000, &[0x90], 1), (6, 0x10_1000, &[], 8)]),
                "entry point",
            ),
            (image(0x10_0000, &[(5, 0x10_0000, &[0x90; 4], 2)]), "bad sizes"),
        ];
        for (elf, why) in cases {
            let err = parse(&elf).unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        assert!(parse(b"\x7fELF").is_err());
        assert!(parse(b"MZ").unwrap_err().contains("not an ELF"));
        let mut lying = image(0x10_0000, &[(5, 0x10_0000, &[0x90], 1)]);
        lying[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&lying).unwrap_err().contains("past the end"));
    }
}
