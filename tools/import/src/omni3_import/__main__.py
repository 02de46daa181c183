from omni3_import.cli import main

main()
