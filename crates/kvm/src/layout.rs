//! The guest's memory map, and the tables the tender writes into the
//! pages the guest cannot touch. Guest addresses are physical addresses
//! (identity-mapped), from 0 to the memory size:
//!
//! | pages | what | guest (ring 3) |
//! |---|---|---|
//! | 0 | nothing (null pointers fault) | - |
//! | 0x1000 | GDT, TSS, IDT | none (ring 0, read-only) |
//! | 0x2000 | exception stubs | none (ring 0, execute) |
//! | 0x3000 | exception stack | none (ring 0, write) |
//! | 0x4000.. | page tables | not mapped at all |
//! | 0x10_0000 (`IMAGE_BASE`) | the image's segments | code r-x, constants r--, data rw- |
//! | after the image | guard page, heap, guard page | heap rw- |
//! | top | stack | rw- |
//!
//! Page tables: 4 KiB pages throughout (each page has its own rights), the
//! user bit on every level above the leaves, rights decided at the leaf,
//! NX on everything but code.

use mirage_kvm_abi::{IMAGE_BASE, PAGE_SIZE};

use crate::elf::Image;

pub(crate) const GDT_ADDR: u64 = 0x1000;
pub(crate) const TSS_ADDR: u64 = GDT_ADDR + 0x80;
pub(crate) const IDT_ADDR: u64 = GDT_ADDR + 0x800;
/// The TSS's I/O permission bitmap covers the ports up to the last
/// hypercall's (and one more byte, which the CPU reads too); every port
/// past it is refused for being beyond the TSS's limit.
const IO_BITMAP_LEN: u64 = mirage_kvm_abi::PORT_EXIT as u64 / 8 + 2;
pub(crate) const TSS_LIMIT: u64 = 104 + IO_BITMAP_LEN - 1;
pub(crate) const STUBS_ADDR: u64 = 0x2000;
pub(crate) const FAULT_STACK_TOP: u64 = 0x4000;
pub(crate) const PML4_ADDR: u64 = 0x4000;
const PDPT_ADDR: u64 = 0x5000;
const PD_ADDR: u64 = 0x6000;
const PT_BASE: u64 = 0x7000;

/// Selectors: ring-0 code (exception stubs), ring-3 data and code, TSS.
pub(crate) const KERNEL_CS: u16 = 0x08;
pub(crate) const USER_DS: u16 = 0x18 | 3;
pub(crate) const USER_CS: u16 = 0x20 | 3;
pub(crate) const TSS_SEL: u16 = 0x28;
pub(crate) const GDT_LIMIT: u16 = 7 * 8 - 1;
/// The CPU's own exceptions; the guest gets no interrupts.
pub(crate) const IDT_VECTORS: u64 = 32;
pub(crate) const IDT_LIMIT: u16 = (IDT_VECTORS * 16 - 1) as u16;
const STUB_LEN: u64 = 16;
const HYPERCALL_PORTS: [u16; 5] = [
    mirage_kvm_abi::PORT_RECV,
    mirage_kvm_abi::PORT_SEND,
    mirage_kvm_abi::PORT_LOG,
    mirage_kvm_abi::PORT_SEED,
    mirage_kvm_abi::PORT_EXIT,
];

/// The smallest and largest guest memory: the page tables for more than
/// this must still fit below the image.
pub const MIN_MEMORY: usize = 1 << 21;
pub const MAX_MEMORY: usize = 256 << 20;
/// Below this the heap is too small to be useful.
const MIN_HEAP: u64 = 64 << 10;

/// What a page is to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Perm {
    /// Not mapped.
    None,
    /// Ring 0 only (the tender's tables and exception path).
    SysRead,
    SysExec,
    SysWrite,
    UserRead,
    UserExec,
    UserWrite,
}

impl Perm {
    fn pte_flags(self) -> u64 {
        const P: u64 = 1;
        const W: u64 = 1 << 1;
        const U: u64 = 1 << 2;
        const NX: u64 = 1 << 63;
        match self {
            Perm::None => 0,
            Perm::SysRead => P | NX,
            Perm::SysExec => P,
            Perm::SysWrite => P | W | NX,
            Perm::UserRead => P | U | NX,
            Perm::UserExec => P | U,
            Perm::UserWrite => P | W | U | NX,
        }
    }
    pub fn guest_readable(self) -> bool {
        matches!(self, Perm::UserRead | Perm::UserExec | Perm::UserWrite)
    }
    pub fn guest_writable(self) -> bool {
        self == Perm::UserWrite
    }
}

/// Where everything is, for one image in one memory size.
#[derive(Debug)]
pub(crate) struct Layout {
    pub memory: u64,
    pub entry: u64,
    pub heap: (u64, u64),
    pub stack_top: u64,
    /// One per page of guest memory.
    pub perms: Vec<Perm>,
}

impl Layout {
    pub fn new(image: &Image<'_>, memory: usize, stack: usize) -> Result<Layout, String> {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) || !(memory as u64).is_multiple_of(PAGE_SIZE) {
            return Err(format!(
                "guest memory of {memory} bytes: must be whole pages from {MIN_MEMORY} to {MAX_MEMORY}"
            ));
        }
        let memory = memory as u64;
        let stack = (stack as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let pages = (memory / PAGE_SIZE) as usize;
        let mut perms = vec![Perm::None; pages];
        let page = |addr: u64| (addr / PAGE_SIZE) as usize;
        perms[page(GDT_ADDR)] = Perm::SysRead;
        perms[page(STUBS_ADDR)] = Perm::SysExec;
        perms[page(FAULT_STACK_TOP - PAGE_SIZE)] = Perm::SysWrite;

        let image_end = image
            .segments
            .iter()
            .map(|s| s.end().div_ceil(PAGE_SIZE) * PAGE_SIZE)
            .max()
            .unwrap_or(IMAGE_BASE);
        let heap_start = image_end + PAGE_SIZE;
        let stack_bottom = memory.checked_sub(stack).ok_or("stack larger than memory")?;
        let heap_end = stack_bottom.saturating_sub(PAGE_SIZE);
        if heap_end < heap_start + MIN_HEAP {
            return Err(format!(
                "guest memory of {memory} bytes is too small for an image ending at {image_end:#x}, \
                 a {stack}-byte stack and a heap"
            ));
        }
        for s in &image.segments {
            let perm = match (s.write, s.exec) {
                (true, _) => Perm::UserWrite,
                (false, true) => Perm::UserExec,
                (false, false) => Perm::UserRead,
            };
            perms[page(s.vaddr)..page(s.end().div_ceil(PAGE_SIZE) * PAGE_SIZE)].fill(perm);
        }
        perms[page(heap_start)..page(heap_end)].fill(Perm::UserWrite);
        perms[page(stack_bottom)..pages].fill(Perm::UserWrite);
        Ok(Layout {
            memory,
            entry: image.entry,
            heap: (heap_start, heap_end - heap_start),
            stack_top: memory,
            perms,
        })
    }

    /// True when every byte of `[addr, addr + len)` is in pages that the
    /// guest itself may read (`write`: write).
    pub fn guest_may(&self, addr: u64, len: u64, write: bool) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if end > self.memory {
            return false;
        }
        if len == 0 {
            return true;
        }
        let (first, last) = (addr / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        self.perms[first as usize..=last as usize].iter().all(|&p| {
            if write {
                p.guest_writable()
            } else {
                p.guest_readable()
            }
        })
    }

    /// Write the image, descriptor tables, exception stubs and page tables
    /// into `mem` (zeroed, `self.memory` bytes).
    pub fn write(&self, image: &Image<'_>, mem: &mut [u8]) {
        for s in &image.segments {
            let at = s.vaddr as usize;
            mem[at..at + s.data.len()].copy_from_slice(s.data);
        }
        self.write_descriptor_tables(mem);
        self.write_page_tables(mem);
    }

    fn write_descriptor_tables(&self, mem: &mut [u8]) {
        let put = |mem: &mut [u8], at: u64, v: u64| {
            mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        // Accessed bits preset: the CPU never writes these pages.
        put(mem, GDT_ADDR + 0x08, 0x00af_9b00_0000_ffff); // ring-0 code, 64-bit
        put(mem, GDT_ADDR + 0x10, 0x00cf_9300_0000_ffff); // ring-0 data
        put(mem, GDT_ADDR + 0x18, 0x00cf_f300_0000_ffff); // ring-3 data
        put(mem, GDT_ADDR + 0x20, 0x00af_fb00_0000_ffff); // ring-3 code, 64-bit
        // The TSS (busy, as loaded): the exception stack, and the ports
        // ring 3 may use.
        let (base, limit) = (TSS_ADDR, TSS_LIMIT);
        let low = limit | (base & 0xff_ffff) << 16 | 0x8b << 40 | ((base >> 24) & 0xff) << 56;
        put(mem, GDT_ADDR + u64::from(TSS_SEL), low);
        put(mem, GDT_ADDR + u64::from(TSS_SEL) + 8, base >> 32);
        put(mem, TSS_ADDR + 4, FAULT_STACK_TOP); // rsp0
        // With IOPL 0, ring 3 may use exactly the ports whose bit is clear:
        // the hypercalls'. Where /dev/kvm is kvm_pvm, the guest's IOPL is
        // not kept at all and this bitmap is what lets `out` reach the
        // tender; on hardware KVM the CPU checks it the same way.
        mem[(TSS_ADDR + 102) as usize..(TSS_ADDR + 104) as usize].copy_from_slice(&104u16.to_le_bytes());
        let bitmap = (TSS_ADDR + 104) as usize;
        mem[bitmap..bitmap + IO_BITMAP_LEN as usize].fill(0xff);
        for port in HYPERCALL_PORTS {
            mem[bitmap + usize::from(port / 8)] &= !(1 << (port % 8));
        }

        for v in 0..IDT_VECTORS {
            let stub = STUBS_ADDR + v * STUB_LEN;
            // Interrupt gate, ring 0 only: `int n` from the guest is a #GP.
            let low =
                (stub & 0xffff) | u64::from(KERNEL_CS) << 16 | 0x8e << 40 | ((stub >> 16) & 0xffff) << 48;
            put(mem, IDT_ADDR + v * 16, low);
            put(mem, IDT_ADDR + v * 16 + 8, stub >> 32);
            // push rdx; push rdi (the guest's, for the report); mov edi, v;
            // mov dx, PORT_FAULT; out dx, al; jmp $ (never resumed)
            let mut code = [0xccu8; STUB_LEN as usize];
            code[..3].copy_from_slice(&[0x52, 0x57, 0xbf]);
            code[3..7].copy_from_slice(&(v as u32).to_le_bytes());
            code[7..9].copy_from_slice(&[0x66, 0xba]);
            code[9..11].copy_from_slice(&mirage_kvm_abi::PORT_FAULT.to_le_bytes());
            code[11] = 0xee;
            code[12..14].copy_from_slice(&[0xeb, 0xfe]);
            let at = stub as usize;
            mem[at..at + code.len()].copy_from_slice(&code);
        }
    }

    fn write_page_tables(&self, mem: &mut [u8]) {
        const TABLE: u64 = 0b111; // present, writable, user: leaves decide
        let put = |mem: &mut [u8], at: u64, v: u64| {
            mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(mem, PML4_ADDR, PDPT_ADDR | TABLE);
        put(mem, PDPT_ADDR, PD_ADDR | TABLE);
        let pts = self.perms.len().div_ceil(512) as u64;
        for t in 0..pts {
            put(mem, PD_ADDR + t * 8, (PT_BASE + t * PAGE_SIZE) | TABLE);
        }
        for (i, perm) in self.perms.iter().enumerate() {
            let flags = perm.pte_flags();
            if flags != 0 {
                put(mem, PT_BASE + i as u64 * 8, (i as u64 * PAGE_SIZE) | flags);
            }
        }
    }
}

const _: () = assert!(TSS_ADDR + TSS_LIMIT < IDT_ADDR && IDT_ADDR + IDT_VECTORS * 16 <= GDT_ADDR + PAGE_SIZE);
/// The page tables for the largest memory fit below the image.
const _: () = assert!(PT_BASE + (MAX_MEMORY as u64 / PAGE_SIZE).div_ceil(512) * PAGE_SIZE <= IMAGE_BASE);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{parse, tests::image};

    fn layout() -> Layout {
        let elf = image(
            0x10_0000,
            &[
                (5, 0x10_0000, &[0x90; 10], 10),
                (4, 0x10_1000, &[1], 1),
                (6, 0x10_2000, &[2], 0x1800),
            ],
        );
        Layout::new(&parse(&elf).unwrap(), 4 << 20, 64 << 10).unwrap()
    }

    #[test]
    fn the_guest_sees_only_its_own_pages() {
        let l = layout();
        // The tender's pages: nothing for ring 3.
        for addr in [
            0,
            GDT_ADDR,
            STUBS_ADDR,
            FAULT_STACK_TOP - 8,
            PML4_ADDR,
            PT_BASE,
            0xf_f000,
        ] {
            assert!(!l.guest_may(addr, 1, false), "{addr:#x}");
        }
        assert!(l.guest_may(0x10_0000, 10, false) && !l.guest_may(0x10_0000, 1, true));
        assert!(l.guest_may(0x10_1000, 1, false) && !l.guest_may(0x10_1000, 1, true));
        assert!(l.guest_may(0x10_2000, 0x2000, true));
        // The guard page after the image, then the heap.
        assert!(!l.guest_may(0x10_4000, 1, false));
        assert_eq!(l.heap.0, 0x10_5000);
        assert!(l.guest_may(l.heap.0, l.heap.1, true));
        assert!(
            !l.guest_may(l.heap.0 + l.heap.1, 1, false),
            "guard page below the stack"
        );
        assert!(l.guest_may(l.stack_top - (64 << 10), 64 << 10, true));
        // Past the end, straddling it, wrapping around.
        assert!(!l.guest_may(l.memory - 8, 16, false));
        assert!(!l.guest_may(u64::MAX - 4, 8, false));
    }

    #[test]
    fn page_tables_give_each_page_its_rights() {
        let l = layout();
        let mut mem = vec![0u8; l.memory as usize];
        l.write(
            &parse(&image(0x10_0000, &[(5, 0x10_0000, &[0x90; 10], 10)])).unwrap(),
            &mut mem,
        );
        let pte = |addr: u64| {
            let at = (PT_BASE + addr / PAGE_SIZE * 8) as usize;
            u64::from_le_bytes(mem[at..at + 8].try_into().unwrap())
        };
        assert_eq!(
            pte(0x10_0000),
            0x10_0000 | 0b101,
            "code: user, read-only, executable"
        );
        assert_eq!(
            pte(0x10_2000),
            0x10_2000 | 0b111 | 1 << 63,
            "data: user, writable, NX"
        );
        assert_eq!(pte(GDT_ADDR), GDT_ADDR | 1 | 1 << 63, "tables: ring 0, read-only");
        assert_eq!(pte(PML4_ADDR), 0, "page tables unmapped");
        assert_eq!(pte(0), 0);
        assert_eq!(&mem[0x10_0000..0x10_000a], &[0x90; 10]);
    }

    #[test]
    fn memory_too_small_or_too_large_is_refused() {
        let elf = image(0x10_0000, &[(5, 0x10_0000, &[0x90; 10], 10)]);
        let img = parse(&elf).unwrap();
        assert!(
            Layout::new(&img, 1 << 20, 4096)
                .unwrap_err()
                .contains("must be whole pages")
        );
        assert!(Layout::new(&img, 512 << 20, 4096).is_err());
        assert!(Layout::new(&img, 2 << 20, 2 << 20).is_err());
        assert!(Layout::new(&img, 2 << 20, 64 << 10).is_ok());
    }
}
