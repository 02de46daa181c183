from omni3_sft.cli import main

main()
