/*
 * The tiny guest of the real-Firecracker tests.
 *
 * The nested (PVM) KVM of CI machines cannot run a Linux kernel under Firecracker, but it
 * runs this: an ELF "kernel" linked at 0x1000000 that Firecracker enters in 64-bit mode
 * (identity-mapped low memory, stack at 0x8ff0). It prints a line on the serial port
 * (0x3f8), then a counter about five times a second from the local APIC timer, so a test
 * can see that the guest is still running. Between ticks the vCPU halts, so an idle tiny
 * guest costs no host CPU.
 *
 * Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) puts scancodes in the i8042; on the next
 * tick the guest prints BANGER_SHUTDOWN and asks the i8042 to reset the machine (0xFE to
 * port 0x64), which ends Firecracker cleanly: a graceful `banger vm stop`.
 *
 * Built with -DSTUBBORN it ignores Ctrl-Alt-Del: a guest that never stops gracefully.
 *
 * Build: gcc -nostdlib -static -no-pie -Wl,-Ttext=0x1000000 -Wl,--build-id=none
 */
    .set COM1, 0x3f8
    .set APIC_BASE, 0xfee00000
    .set TICK_VECTOR, 0x20

    .text
    .code64
    .globl _start
_start:
    cli
    lea     hello(%rip), %rsi
    call    puts

    /* Map the local APIC page: a new page directory for the 4th GiB, hung from the
     * PDPT that Firecracker's identity map uses (CR3 -> PML4[0] -> PDPT). */
    mov     %cr3, %rax
    and     $~0xfff, %rax
    mov     (%rax), %rax                /* PML4[0]: the PDPT */
    and     $~0xfff, %rax
    lea     apic_pd(%rip), %rbx
    or      $0x3, %rbx                  /* present, writable */
    mov     %rbx, 24(%rax)              /* PDPT[3] covers 3-4 GiB */
    lea     apic_pd(%rip), %rbx
    mov     $(APIC_BASE | 0x9b), %rcx   /* present, writable, PWT, PCD, 2 MiB page */
    mov     %rcx, (0x1f7 * 8)(%rbx)     /* 0xfee00000 >> 21 & 511 */
    mov     %cr3, %rax
    mov     %rax, %cr3                  /* flush the TLB */

    /* The IDT: every vector to `fault` except the timer's. */
    lea     idt(%rip), %rdi
    xor     %ecx, %ecx
1:  lea     fault(%rip), %rax
    cmp     $TICK_VECTOR, %ecx
    jne     2f
    lea     tick(%rip), %rax
2:  mov     %ax, (%rdi)                 /* offset 0..15 */
    movw    $0x08, 2(%rdi)              /* Firecracker's code segment */
    movw    $0x8e00, 4(%rdi)            /* present interrupt gate */
    shr     $16, %rax
    mov     %ax, 6(%rdi)                /* offset 16..31 */
    shr     $16, %rax
    mov     %eax, 8(%rdi)               /* offset 32..63 */
    movl    $0, 12(%rdi)
    add     $16, %rdi
    inc     %ecx
    cmp     $64, %ecx
    jne     1b
    lidt    idtr(%rip)

    /* Mask the legacy PIC: the i8042's interrupt would arrive at a vector of its
     * choosing; the timer polls the i8042 instead. */
    mov     $0xff, %al
    out     %al, $0x21
    out     %al, $0xa1

    /* Local APIC: software-enable it, a periodic timer on TICK_VECTOR. KVM's APIC bus
     * runs at 1 GHz: divide by 128 and count 1562500 is five ticks a second. */
    mov     $APIC_BASE, %rbx
    movl    $0x1ff, 0xf0(%rbx)          /* spurious vector 0xff, APIC enabled */
    movl    $0xa, 0x3e0(%rbx)           /* divide by 128 */
    movl    $(0x20000 | TICK_VECTOR), 0x320(%rbx)  /* LVT timer: periodic */
    movl    $1562500, 0x380(%rbx)       /* initial count */

    lea     ready(%rip), %rsi
    call    puts
idle:
    sti
    hlt
    jmp     idle

/* The timer: print the counter; on a key in the i8042, shut down. */
tick:
    push    %rax
    push    %rbx
    push    %rcx
    push    %rdx
    push    %rsi
    push    %rdi
#ifndef STUBBORN
    mov     $0x64, %dx
    in      (%dx), %al
    test    $1, %al
    jnz     shutdown
#endif
    incq    counter(%rip)
    lea     prefix(%rip), %rsi
    call    puts
    mov     counter(%rip), %rax
    call    putdec
    mov     $'\n', %al
    call    putc
    mov     $APIC_BASE, %rbx
    movl    $0, 0xb0(%rbx)              /* EOI */
    pop     %rdi
    pop     %rsi
    pop     %rdx
    pop     %rcx
    pop     %rbx
    pop     %rax
    iretq

shutdown:
    mov     $0x60, %dx
    in      (%dx), %al                  /* take the scancode */
    lea     bye(%rip), %rsi
    call    puts
    mov     $0x64, %dx
    mov     $0xfe, %al                  /* i8042: pulse reset */
    out     %al, (%dx)
    cli
3:  hlt
    jmp     3b

/* Anything unexpected: say so and stop the vCPU for good. */
fault:
    lea     oops(%rip), %rsi
    call    puts
    cli
4:  hlt
    jmp     4b

/* putc: %al to the serial port. */
putc:
    mov     $COM1, %dx
    out     %al, (%dx)
    ret

/* puts: the NUL-terminated string at %rsi. */
puts:
    lodsb
    test    %al, %al
    jz      5f
    call    putc
    jmp     puts
5:  ret

/* putdec: %rax in decimal. */
putdec:
    lea     digits_end(%rip), %rdi
    movb    $0, (%rdi)
    mov     $10, %rcx
6:  xor     %edx, %edx
    div     %rcx
    add     $'0', %dl
    dec     %rdi
    mov     %dl, (%rdi)
    test    %rax, %rax
    jnz     6b
    mov     %rdi, %rsi
    jmp     puts

    .section .rodata
hello:  .asciz "BANGER_TINY_GUEST\n"
ready:  .asciz "BANGER_READY\n"
prefix: .asciz "BANGER_TICK "
bye:    .asciz "BANGER_SHUTDOWN\n"
oops:   .asciz "BANGER_FAULT\n"
idtr:   .word 64 * 16 - 1
        .quad idt

    .data
    .balign 8
counter: .quad 0
digits:  .space 24
digits_end: .byte 0

    .bss
    .balign 4096
apic_pd: .space 4096
idt:     .space 64 * 16
