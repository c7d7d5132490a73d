//! The micro-VM: guest memory, one vCPU in 64-bit ring 3, and the exit
//! loop. The only `unsafe` of the tender outside the watchdog's signal and
//! `getrandom` is here: mapping guest memory and handing it to KVM.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_fpu, kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use mirage_engine::Host;
use mirage_kvm_abi as abi;

use crate::elf;
use crate::hypercall::{self, Args, LogSink, Outcome};
use crate::layout::{self, Layout};
use crate::loglimit::LogLimit;
use crate::watchdog::Watchdog;
use crate::{Config, VmError};

/// Anonymous memory for the guest, unmapped on drop.
struct GuestMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: GuestMemory owns its mapping as a Box<[u8]> owns its bytes; moving
// it to another thread moves that ownership.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    fn new(len: usize) -> io::Result<GuestMemory> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected. Pages are zero and only committed when touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(GuestMemory { ptr, len })
    }

    /// The guest's memory, for the tender to read and write while the vCPU
    /// is stopped (it runs on this same thread, inside `KVM_RUN` only).
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, alive
        // as long as `self`; the `&mut self` borrow makes this the only
        // slice, and the guest cannot run while it exists (the vCPU runs
        // only in `Vm::run`'s loop, between uses).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the VM that used
        // it is dropped first (field order in `Vm`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A guest ready to run (see the crate docs).
pub struct Vm {
    // Dropped in this order: the vCPU and VM before the memory they use.
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMemory,
    layout: Layout,
    watchdog: Duration,
    /// The registers travel in the shared `kvm_run` page (KVM_CAP_SYNC_REGS)
    /// instead of two more ioctls per hypercall.
    sync_regs: bool,
}

/// `KVM_RUN` failing with EAGAIN this many times in a row without any
/// exit is an error, not a retry.
const MAX_EAGAIN_IN_A_ROW: u32 = 10_000;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, io::Error::from_raw_os_error(e.errno()))
}

impl Vm {
    /// Build the VM for `image` on `kvm` (an open `/dev/kvm`): memory,
    /// tables, the vCPU in ring 3 at the image's entry.
    pub fn new(kvm: &Kvm, image: &[u8], config: &Config) -> Result<Vm, VmError> {
        let image = elf::parse(image).map_err(VmError::Image)?;
        let layout = Layout::new(&image, config.memory, config.stack).map_err(VmError::Config)?;
        let mut mem = GuestMemory::new(config.memory).map_err(|e| VmError::Kvm("mmap of guest memory", e))?;
        layout.write(&image, mem.as_mut_slice());

        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: config.memory as u64,
            userspace_addr: mem.ptr.as_ptr() as u64,
        };
        // SAFETY: the region is the live mapping `mem`, which outlives the
        // VM (dropped after it, see `Vm`), and is not handed out elsewhere.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        // Long mode and NX are refused unless the guest's CPUID has them.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        set_ring3_entry(&vcpu, &layout)?;
        let mut vcpu = vcpu;
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        if sync_regs {
            vcpu.set_sync_valid_reg(SyncReg::Register);
        }
        Ok(Vm {
            vcpu,
            _vm: vm,
            mem,
            layout,
            watchdog: config.watchdog,
            sync_regs,
        })
    }

    /// Run the guest until it exits, relaying its messages to and from
    /// `host` and its log lines to `log`. `Ok` only for an exit with
    /// status 0 (the engine's work is over); every other end is an error
    /// that says why. Blocks the calling thread, which is the vCPU's.
    pub fn run<H: Host>(self, host: &mut H, log: LogSink<'_>) -> Result<(), VmError> {
        self.arm()?.run(host, log)
    }

    /// Start the watchdog thread now, for a run on the calling thread
    /// later ([`ArmedVm::run`]): a tender under a seccomp filter that
    /// forbids creating threads starts it before the filter.
    pub fn arm(self) -> Result<ArmedVm, VmError> {
        let watchdog =
            Arc::new(Watchdog::new(self.watchdog).map_err(|e| VmError::Kvm("watchdog signal", e))?);
        let theirs = watchdog.clone();
        let (started, running) = std::sync::mpsc::sync_channel(0);
        let watcher = std::thread::Builder::new()
            .name("kvm-watchdog".into())
            .spawn(move || {
                // The thread's own start-up (its name, its signal stack) is
                // done once it runs this: a filter installed after `arm`
                // returns need not allow it.
                let _ = started.send(());
                theirs.watch()
            })
            .map_err(|e| VmError::Kvm("watchdog thread", e))?;
        running
            .recv()
            .map_err(|_| VmError::Kvm("watchdog thread", io::Error::other("it ended at its start")))?;
        Ok(ArmedVm {
            vm: self,
            watchdog,
            watcher: Some(watcher),
            vcpu_thread: std::thread::current().id(),
        })
    }

    /// The vCPU's descriptor: the only one a tender's seccomp filter lets
    /// it call `KVM_RUN` on.
    pub fn vcpu_fd(&self) -> RawFd {
        self.vcpu.as_raw_fd()
    }

    /// Whether the registers travel in the shared `kvm_run` page
    /// (KVM_CAP_SYNC_REGS): then a hypercall costs `KVM_RUN` alone, and no
    /// `KVM_GET_REGS`/`KVM_SET_REGS`.
    pub fn uses_sync_regs(&self) -> bool {
        self.sync_regs
    }

    /// The exit loop, with the guest's log lines rate-limited
    /// ([`LogLimit`]); the count of any suppressed is logged at the end.
    fn run_loop<H: Host>(
        &mut self,
        host: &mut H,
        log: LogSink<'_>,
        watchdog: &Watchdog,
        watcher: &std::thread::Thread,
    ) -> Result<(), VmError> {
        let mut limit = LogLimit::new(std::time::Instant::now());
        let result = {
            let mut limited = |line: &str| limit.offer(std::time::Instant::now(), line, &mut *log);
            self.exits(host, &mut limited, watchdog, watcher)
        };
        limit.flush(log);
        result
    }

    fn exits<H: Host>(
        &mut self,
        host: &mut H,
        log: LogSink<'_>,
        watchdog: &Watchdog,
        watcher: &std::thread::Thread,
    ) -> Result<(), VmError> {
        let expired = || VmError::Watchdog {
            bound: watchdog.bound(),
        };
        // KVM_RUN that fails with EAGAIN every time (kvm_pvm does under
        // RLIMIT_NPROC 0, or under ptrace) would spin here forever, each
        // entry resetting the watchdog: a bound on retries in a row.
        let mut again = 0u32;
        loop {
            if !watchdog.enter(watcher) {
                watchdog.leave();
                return Err(expired());
            }
            let exit = self.vcpu.run();
            if watchdog.leave() {
                return Err(expired());
            }
            let port = match exit {
                Ok(VcpuExit::IoOut(port, _)) => port,
                Ok(VcpuExit::IoIn(port, _)) => return Err(VmError::UnknownPort { port }),
                Ok(VcpuExit::MmioRead(addr, _)) => return Err(VmError::Mmio { addr, write: false }),
                Ok(VcpuExit::MmioWrite(addr, _)) => return Err(VmError::Mmio { addr, write: true }),
                Ok(VcpuExit::Shutdown) => return Err(VmError::TripleFault),
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => return Err(VmError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) if e.errno() == libc::EAGAIN && again < MAX_EAGAIN_IN_A_ROW => {
                    again += 1;
                    continue;
                }
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            };
            let regs = if self.sync_regs {
                self.vcpu.sync_regs().regs
            } else {
                self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?
            };
            again = 0;
            if port == abi::PORT_FAULT {
                return Err(self.fault(&regs));
            }
            let args = Args {
                port,
                rdi: regs.rdi,
                rsi: regs.rsi,
                r8: regs.r8,
            };
            match hypercall::dispatch(args, &self.layout, self.mem.as_mut_slice(), host, log) {
                Ok(Outcome::Exit(0)) => return Ok(()),
                Ok(Outcome::Exit(status)) => return Err(VmError::Exited { status }),
                Ok(Outcome::Resume { rax, rdx }) => self.resume_with(regs, rax, rdx)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Set the hypercall's results for the next entry.
    fn resume_with(&mut self, mut regs: kvm_regs, rax: u64, rdx: Option<u64>) -> Result<(), VmError> {
        regs.rax = rax;
        regs.rdx = rdx.unwrap_or(regs.rdx);
        if self.sync_regs {
            self.vcpu.sync_regs_mut().regs = regs;
            self.vcpu.set_sync_dirty_reg(SyncReg::Register);
            Ok(())
        } else {
            self.vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
        }
    }

    /// The guest raised exception `rdi`: the stub saved the guest's `rdx`
    /// and `rdi`, and the CPU's frame follows (error code, rip, ...).
    fn fault(&mut self, regs: &kvm_regs) -> VmError {
        let vector = regs.rdi as u8;
        let has_code = matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
        let mem = self.mem.as_mut_slice();
        // Only the exception stack page holds the frame; anything else is
        // a guest that jumped to the stub's `out` itself.
        let stack = (layout::FAULT_STACK_TOP - abi::PAGE_SIZE)..layout::FAULT_STACK_TOP;
        let word = |i: u64| -> Option<u64> {
            let at = regs.rsp.checked_add(i * 8)?;
            stack
                .contains(&at)
                .then(|| u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap_or_default()))
        };
        let Some(guest_rdx) = word(1) else {
            return VmError::UnknownPort {
                port: abi::PORT_FAULT,
            };
        };
        let error_code = if has_code { word(2) } else { None };
        let rip = word(2 + u64::from(has_code)).unwrap_or(0);
        // A #GP on `in` or `out`: a port the TSS does not open.
        let insn = |at: u64| usize::try_from(at).ok().and_then(|a| mem.get(a).copied());
        if vector == 13 {
            let (op, next) = match insn(rip) {
                Some(0x66) => (insn(rip + 1), rip + 2),
                op => (op, rip + 1),
            };
            match op {
                Some(0xe4..=0xe7) => {
                    return VmError::UnknownPort {
                        port: u16::from(insn(next).unwrap_or(0)),
                    };
                }
                Some(0xec..=0xef) => {
                    return VmError::UnknownPort {
                        port: guest_rdx as u16,
                    };
                }
                _ => {}
            }
        }
        let addr = (vector == 14).then(|| self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0));
        VmError::Exception {
            vector,
            rip,
            error_code,
            addr,
        }
    }
}

/// A guest whose watchdog thread runs ([`Vm::arm`]).
pub struct ArmedVm {
    vm: Vm,
    watchdog: Arc<Watchdog>,
    watcher: Option<JoinHandle<()>>,
    vcpu_thread: ThreadId,
}

impl ArmedVm {
    /// [`Vm::run`], on the thread that armed it (the one the watchdog
    /// kicks).
    pub fn run<H: Host>(mut self, host: &mut H, log: LogSink<'_>) -> Result<(), VmError> {
        if std::thread::current().id() != self.vcpu_thread {
            return Err(VmError::Config(
                "the guest must run on the thread that armed its watchdog".into(),
            ));
        }
        let watcher = self.watcher.as_ref().map(|w| w.thread().clone());
        let Some(watcher) = watcher else {
            return Err(VmError::Config("the watchdog is gone".into()));
        };
        self.vm.run_loop(host, log, &self.watchdog, &watcher)
    }
}

impl Drop for ArmedVm {
    /// The watchdog ends with the guest's run.
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            self.watchdog.stop(watcher.thread());
            let _ = watcher.join();
        }
    }
}

/// 64-bit mode, ring 3, paging with the tender's tables, SSE on, no
/// interrupts; IOPL 0, so that only the hypercall ports that the TSS's
/// bitmap opens reach the tender (any other I/O is a #GP).
fn set_ring3_entry(vcpu: &VcpuFd, layout: &Layout) -> Result<(), VmError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let seg = |selector: u16, type_: u8, code: bool| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(layout::USER_CS, 0xb, true);
    let data = seg(layout::USER_DS, 0x3, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        base: layout::TSS_ADDR,
        limit: layout::TSS_LIMIT as u32,
        selector: layout::TSS_SEL,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = layout::GDT_LIMIT;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = layout::IDT_LIMIT;
    const CR0_PE: u64 = 1;
    const CR0_MP: u64 = 1 << 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_WP: u64 = 1 << 16;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const CR4_OSFXSR: u64 = 1 << 9;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    const EFER_NXE: u64 = 1 << 11;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = layout::PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;

    const RFLAGS_RESERVED: u64 = 1 << 1;
    let regs = kvm_regs {
        rip: layout.entry,
        rsp: layout.stack_top,
        rdi: layout.heap.0,
        rsi: layout.heap.1,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(())
}
