"""The synthetic kernel's VMCOREINFO note text, line by line as the kernel writes it.

The order and formats are kernel/vmcore_info.c's (crash_core.c before 6.9) and
arch/x86/kernel/crash_core_64.c's: SYMBOL(x)=%lx, SIZE/OFFSET/LENGTH/NUMBER %ld (so
NUMBER may be negative), NUMBER(VMALLOC_START)=0x%lx (6.9+), KERNELOFFSET=%lx,
CRASHTIME=%lld last. The lines makedumpfile does not read keep the real 6.1 kernel's
values, so the text looks like a real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dumpd.testing.kernelpages import HUGETLB_PAGE_DTOR, PAGE_SIZE, STRUCT_PAGE, Variant

TYPE_KEYS = {
    "buddy": "PAGE_BUDDY_MAPCOUNT_VALUE",
    "offline": "PAGE_OFFLINE_MAPCOUNT_VALUE",
    "hugetlb": "PAGE_HUGETLB_MAPCOUNT_VALUE",
    "slab": "PAGE_SLAB_MAPCOUNT_VALUE",
    "unaccepted": "PAGE_UNACCEPTED_MAPCOUNT_VALUE",
}
_PRINTK = (  # the printk ring buffer's layout, as the 6.1 kernel exports it
    "SIZE(printk_ringbuffer)=88", "OFFSET(printk_ringbuffer.desc_ring)=0",
    "OFFSET(printk_ringbuffer.text_data_ring)=48", "OFFSET(printk_ringbuffer.fail)=80",
    "SIZE(prb_desc_ring)=48", "OFFSET(prb_desc_ring.count_bits)=0",
    "OFFSET(prb_desc_ring.descs)=8", "OFFSET(prb_desc_ring.infos)=16",
    "OFFSET(prb_desc_ring.head_id)=24", "OFFSET(prb_desc_ring.tail_id)=32",
    "SIZE(prb_desc)=24", "OFFSET(prb_desc.state_var)=0", "OFFSET(prb_desc.text_blk_lpos)=8",
    "SIZE(prb_data_blk_lpos)=16", "OFFSET(prb_data_blk_lpos.begin)=0",
    "OFFSET(prb_data_blk_lpos.next)=8", "SIZE(printk_info)=88", "OFFSET(printk_info.seq)=0",
    "OFFSET(printk_info.ts_nsec)=8", "OFFSET(printk_info.text_len)=16",
    "OFFSET(printk_info.caller_id)=20", "OFFSET(printk_info.dev_info)=24",
)


@dataclass(frozen=True, slots=True)
class Facts:
    """The numbers of one synthetic kernel that its VMCOREINFO states."""

    osrelease: str
    symbols: Mapping[str, int]  # init_uts_ns, _stext, init_top_pgt, mem_section, ...
    section_size_bits: int
    max_physmem_bits: int
    section_roots: int
    phys_base: int
    kernel_offset: int
    l5: bool
    sme_mask: int
    vmalloc_start: int
    vmemmap: int
    crashtime: int


def vmcoreinfo_lines(v: Variant, f: Facts) -> list[str]:
    """Every line of the note, without its newline, in the kernel's order."""
    sym = {name: f"SYMBOL({name})={addr:x}" for name, addr in f.symbols.items()}
    lines = [
        f"OSRELEASE={f.osrelease}", "BUILD-ID=6a2b4ac77585b8cf102cba771300e573c8489b69",
        f"PAGESIZE={PAGE_SIZE}", sym["init_uts_ns"], "OFFSET(uts_namespace.name)=0",
        sym["node_online_map"], f"SYMBOL(swapper_pg_dir)={f.symbols['init_top_pgt']:x}",
        sym["_stext"],
    ]
    if v.version < (6, 9):
        lines.append(sym["vmap_area_list"])
    else:
        lines.append(f"NUMBER(VMALLOC_START)=0x{f.vmalloc_start:x}")
    if v.version >= (6, 10):
        lines.append(f"SYMBOL(vmemmap)={f.vmemmap:x}")
    lines += [
        sym["mem_section"], f"LENGTH(mem_section)={f.section_roots}", "SIZE(mem_section)=16",
        "OFFSET(mem_section.section_mem_map)=0", f"NUMBER(SECTION_SIZE_BITS)={f.section_size_bits}",
        f"NUMBER(MAX_PHYSMEM_BITS)={f.max_physmem_bits}", f"SIZE(page)={STRUCT_PAGE}",
        "SIZE(pglist_data)=174208", "SIZE(zone)=1536", "SIZE(free_area)=88",
        "SIZE(list_head)=16", "SIZE(nodemask_t)=128", "OFFSET(page.flags)=0",
        "OFFSET(page._refcount)=52", "OFFSET(page.mapping)=24", "OFFSET(page.lru)=8",
        "OFFSET(page._mapcount)=48", "OFFSET(page.private)=40",
    ]
    if v.dtor:
        lines += ["OFFSET(page.compound_dtor)=16", "OFFSET(page.compound_order)=17"]
    lines += [
        f"OFFSET(page.{v.head_field})=8", "OFFSET(pglist_data.node_zones)=0",
        "OFFSET(pglist_data.nr_zones)=171552", "OFFSET(pglist_data.node_start_pfn)=171560",
        "OFFSET(pglist_data.node_spanned_pages)=171576", "OFFSET(pglist_data.node_id)=171584",
        "OFFSET(zone.free_area)=256", "OFFSET(zone.vm_stat)=1344",
        "OFFSET(zone.spanned_pages)=144", "OFFSET(free_area.free_list)=0",
        "OFFSET(list_head.next)=0", "OFFSET(list_head.prev)=8",
    ]
    if v.version < (6, 9):
        lines += ["OFFSET(vmap_area.va_start)=0", "OFFSET(vmap_area.list)=40"]
    lines += ["LENGTH(zone.free_area)=11", sym["prb"], sym["printk_rb_static"],
              sym["clear_seq"], *_PRINTK, "LENGTH(free_area.free_list)=5",
              "NUMBER(NR_FREE_PAGES)=0"]
    lines += [f"NUMBER(PG_{name})={v.flags[name]}"
              for name in ("lru", "private", "swapcache", "swapbacked")]
    lines.append(_number_slab(v))
    lines += [f"NUMBER(PG_hwpoison)={v.flags['hwpoison']}", f"NUMBER(PG_head_mask)={v.bit('head')}"]
    lines += _types(v)
    lines += [sym[name] for name in ("kallsyms_names", "kallsyms_num_syms",
                                     "kallsyms_token_table", "kallsyms_token_index",
                                     "kallsyms_offsets")]
    lines += [
        f"NUMBER(phys_base)={f.phys_base}", sym["init_top_pgt"],
        f"NUMBER(pgtable_l5_enabled)={int(f.l5)}", sym["node_data"], "LENGTH(node_data)=1024",
        f"KERNELOFFSET={f.kernel_offset:x}", "NUMBER(KERNEL_IMAGE_SIZE)=1073741824",
        f"NUMBER(sme_mask)={f.sme_mask}", f"CRASHTIME={f.crashtime}",
    ]
    return lines


def _number_slab(v: Variant) -> str:
    if "slab" in v.exported:
        return f"NUMBER({TYPE_KEYS['slab']})={v.types['slab']}"
    return f"NUMBER(PG_slab)={v.flags['slab']}"


def _types(v: Variant) -> list[str]:
    """Buddy, then hugetlb (6.1: its compound destructor), offline, unaccepted."""
    out = [f"NUMBER({TYPE_KEYS['buddy']})={v.types['buddy']}"]
    if v.dtor:
        out.append(f"NUMBER(HUGETLB_PAGE_DTOR)={HUGETLB_PAGE_DTOR}")
    out += [f"NUMBER({TYPE_KEYS[name]})={v.types[name]}"
            for name in ("hugetlb", "offline", "unaccepted") if name in v.exported]
    return out
