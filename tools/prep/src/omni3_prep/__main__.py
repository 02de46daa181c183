from omni3_prep.cli import main

if __name__ == "__main__":  # worker processes are spawned: they import this module and must not rerun the CLI
    main()
