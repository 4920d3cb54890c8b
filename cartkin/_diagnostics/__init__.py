"""Diagnostics of population fits: goodness-of-fit plots, individual fits, pcVPC, NPDE and the
bridge to arviz (convergence, trace/rank/pair plots, posterior predictive checks).

Everything here reads a fit's results (a run folder, or the result objects) and simulates from the
fitted model through :mod:`cartkin._likelihood`: nothing here re-states the statistical model.
"""
