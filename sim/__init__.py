"""Simulation: Verilator builds of the generated RTL and the cocotb testbenches that check them."""
