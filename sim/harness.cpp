// The compiled host of sim/harness.py's SimHarness: Verilator builds it with the harness into a
// shared library, which sim.harness.HarnessTransport calls through ctypes once a transaction.
//
// A transaction hands over its command words and the number of response words it waits for;
// this loop then runs the clock, offering the next command word every cycle (the harness's
// buffer takes it whenever it has room, and the device never finds the buffer empty while words
// remain) and collecting every response word the cycle it leaves the device. It returns when
// every command word has reached the device and every response word asked for is in, so Python
// runs once a transaction, never once a cycle. Response words that arrive beyond those asked
// for are kept for the next transaction, as a stream would keep them.

#include <cstdint>
#include <deque>
#include <memory>

#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

namespace {

const uint64_t HALF_PERIOD = 5;     // time units (ns) a clock level lasts

struct Harness {
    VerilatedContext context;
    Vtop top{&context, "top"};
    std::deque<uint32_t> early;     // response words not yet asked for
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> trace;
#endif

    void settle() {
        top.eval();
#if VM_TRACE
        if (trace) trace->dump(context.time());
#endif
    }
};

}  // namespace

extern "C" {

// A new simulation at cycle 0; ``trace_path`` (or null) names a VCD to write (a build with
// waves only).
void *harness_open(const char *trace_path) {
    Harness *harness = new Harness;
#if VM_TRACE
    if (trace_path) {
        harness->context.traceEverOn(true);
        harness->trace.reset(new VerilatedVcdC);
        harness->top.trace(harness->trace.get(), 99);
        harness->trace->open(trace_path);
    }
#else
    (void)trace_path;
#endif
    harness->top.clk = 0;
    harness->settle();
    return harness;
}

// Whether this build can write waves.
int harness_traces(void) { return VM_TRACE; }

void harness_close(void *handle) {
    Harness *harness = static_cast<Harness *>(handle);
    harness->top.final();
#if VM_TRACE
    if (harness->trace) harness->trace->close();
#endif
    delete harness;
}

// Clock cycles simulated so far.
uint64_t harness_cycles(void *handle) {
    return static_cast<Harness *>(handle)->context.time() / (2 * HALF_PERIOD);
}

// Send the ``count_in`` command words ``words``; put the next ``count_out`` response words in
// ``out``. Returns 0, or 1 if ``patience`` cycles passed with no word moving either way (the
// device hangs). ``moved`` gets the command words the buffer took and the response words put
// in ``out``.
int harness_transact(void *handle, const uint32_t *words, uint64_t count_in, uint32_t *out,
                     uint64_t count_out, uint64_t patience, uint64_t *moved) {
    Harness *harness = static_cast<Harness *>(handle);
    Vtop &top = harness->top;
    uint64_t sent = 0, received = 0, quiet = 0;
    const auto owed = [&] { return sent < count_in || received < count_out || top.pending; };
    for (; received < count_out && !harness->early.empty(); received++) {
        out[received] = harness->early.front();
        harness->early.pop_front();
    }
    while (owed() && quiet < patience) {
        const bool offer = sent < count_in;
        top.i_valid = offer;
        if (offer) top.i_word = words[sent];
        top.clk = 0;
        harness->settle();
        // What moves at the coming rising edge: the buffer's ``ready`` and the device's
        // response are flip-flops or follow from them, settled above.
        const bool taken = offer && top.i_ready;
        const bool answered = top.o_valid;
        const uint32_t answer = top.o_word;
        harness->context.timeInc(HALF_PERIOD);
        top.clk = 1;
        harness->settle();
        harness->context.timeInc(HALF_PERIOD);
        sent += taken;
        if (answered) {
            if (received < count_out) {
                out[received++] = answer;
            } else {
                harness->early.push_back(answer);
            }
        }
        quiet = (taken || answered) ? 0 : quiet + 1;
    }
    top.i_valid = 0;
    moved[0] = sent;
    moved[1] = received;
    return owed();
}

}  // extern "C"
