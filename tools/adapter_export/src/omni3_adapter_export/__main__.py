from omni3_adapter_export.cli import main

main()
