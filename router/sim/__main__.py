"""`python -m router.sim --port P ...` runs one simulated worker."""

from router.sim.cli import main

if __name__ == "__main__":
    main()
