from vtp_export.cli import main

if __name__ == "__main__":  # not in the processes multiprocessing spawns (vLLM's engine)
    raise SystemExit(main())
