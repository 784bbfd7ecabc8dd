from physical_adv.cli import main

if __name__ == "__main__":
    main()
