"""SciML experiment: FNO and UNet trained from scratch on generated PDE data, baseline vs TempBalance.

``pde_data`` generates and caches the data sets (2D Darcy flow, 1D viscous Burgers), ``models`` builds the
networks, ``metrics`` holds nRMSE and the paired tests, ``run.py`` is the one command.
"""
