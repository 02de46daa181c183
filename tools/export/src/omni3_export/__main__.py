from omni3_export.cli import main

main()
