"""`python -m app ...` = `trash ...`: what torchrun and `accelerate launch -m app` start in each process."""

from app.cli import main

if __name__ == "__main__":
    main()
